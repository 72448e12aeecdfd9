//! `org.gentoo.Gse1.Health` over [`HealthService`].

use std::sync::Arc;

use gse_dbus::DBusError;
use zbus::{
    Connection, interface,
    message::Header,
    object_server::{InterfaceRef, SignalEmitter},
};

use crate::health::{HealthService, HealthSnapshot};

pub struct HealthObject {
    svc: Arc<HealthService>,
}

impl HealthObject {
    pub fn new(svc: Arc<HealthService>) -> Self {
        HealthObject { svc }
    }
}

/// Whether this boot is healthy (DESIGN §5), and the report behind it.
#[interface(name = "org.gentoo.Gse1.Health")]
impl HealthObject {
    /// unknown, starting, green or red.
    #[zbus(property)]
    fn status(&self) -> String {
        self.svc.snapshot().status.to_string()
    }

    /// The slot this system booted from.
    #[zbus(property)]
    fn booted_slot(&self) -> String {
        self.svc.snapshot().booted_slot
    }

    /// Completed healthy cycles (healthy startup and clean shutdown) of the booted slot.
    #[zbus(property)]
    fn healthy_cycles(&self) -> u64 {
        self.svc.snapshot().healthy_cycles
    }

    /// The full health report as JSON, as printed by `gsectl health --json`.
    fn get_report(&self) -> Result<String, DBusError> {
        serde_json::to_string(&self.svc.report()).map_err(|e| DBusError::Failed(e.to_string()))
    }

    /// Declare this boot healthy, whatever the checks say.
    async fn mark_good(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DBusError> {
        super::auth::authorize(conn, &header, super::auth::Action::Health).await?;
        Ok(self.svc.mark_good()?)
    }

    /// Declare this boot red, with a reason for the record.
    async fn mark_bad(
        &self,
        reason: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DBusError> {
        super::bounded("the reason", &reason, super::limits::REASON)?;
        super::auth::authorize(conn, &header, super::auth::Action::Health).await?;
        Ok(self.svc.mark_bad(&reason)?)
    }

    /// Record the clean shutdown of this boot (called by the init system on shutdown).
    async fn record_shutdown(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DBusError> {
        super::auth::authorize(conn, &header, super::auth::Action::Health).await?;
        Ok(self.svc.record_shutdown()?)
    }

    /// Tell the daemon that systemd reached boot-complete.target.
    async fn boot_complete(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DBusError> {
        super::auth::authorize(conn, &header, super::auth::Action::Health).await?;
        self.svc.boot_complete();
        Ok(())
    }

    /// The new status, on every change of Status.
    #[zbus(signal, name = "StatusChanged")]
    async fn status_signal(emitter: &SignalEmitter<'_>, status: &str) -> zbus::Result<()>;
}

/// `PropertiesChanged` and `StatusChanged` for one change of the snapshot.
pub(super) async fn emit(
    iface: InterfaceRef<HealthObject>,
    last: HealthSnapshot,
    now: HealthSnapshot,
) -> zbus::Result<()> {
    let (obj, em) = (iface.get().await, iface.signal_emitter());
    if now.status != last.status {
        obj.status_changed(em).await?;
        HealthObject::status_signal(em, now.status.as_str()).await?;
    }
    if now.booted_slot != last.booted_slot {
        obj.booted_slot_changed(em).await?;
    }
    if now.healthy_cycles != last.healthy_cycles {
        obj.healthy_cycles_changed(em).await?;
    }
    Ok(())
}
