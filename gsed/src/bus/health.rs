//! `org.gentoo.Gse1.Health` over [`HealthService`].

use std::sync::Arc;

use gse_dbus::{DBusError, OBJECT_PATH};
use tokio::sync::watch;
use tracing::warn;
use zbus::{Connection, interface, message::Header, object_server::SignalEmitter};

use crate::health::{HealthService, Snapshot};

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

/// Emits `PropertiesChanged` and `StatusChanged` for every change of the snapshot.
pub(super) async fn forward_changes(conn: Connection, mut rx: watch::Receiver<Snapshot>) -> zbus::Result<()> {
    let iface = conn.object_server().interface::<_, HealthObject>(OBJECT_PATH).await?;
    let mut last = rx.borrow_and_update().clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let now = rx.borrow_and_update().clone();
            let obj = iface.get().await;
            let em = iface.signal_emitter();
            let mut sent = Ok(());
            if now.status != last.status {
                sent = sent.and(obj.status_changed(em).await);
                sent = sent.and(HealthObject::status_signal(em, now.status.as_str()).await);
            }
            if now.booted_slot != last.booted_slot {
                sent = sent.and(obj.booted_slot_changed(em).await);
            }
            if now.healthy_cycles != last.healthy_cycles {
                sent = sent.and(obj.healthy_cycles_changed(em).await);
            }
            if let Err(e) = sent {
                warn!(error = %e, "could not emit a health signal");
            }
            last = now;
        }
    });
    Ok(())
}
