//! `org.gentoo.Gse1.Servers` and `org.gentoo.Gse1.Update` over [`ServersService`].

use std::sync::Arc;

use gse_dbus::{
    DBusError, OBJECT_PATH,
    servers::{ServerRow, UpdateState},
};
use tracing::warn;
use zbus::{
    Connection, interface,
    message::Header,
    object_server::{InterfaceRef, SignalEmitter},
};

use tokio::sync::broadcast;

use crate::servers::{
    ServersService, ServersSnapshot, UpdateService,
    select::Switch,
    service::ServersError,
    update::{UpdateError, UpdateSnapshot},
};

impl From<ServersError> for DBusError {
    fn from(e: ServersError) -> Self {
        match e {
            ServersError::Unknown(_) => DBusError::InvalidArgs(e.to_string()),
            ServersError::NoServer => DBusError::NotPossible(e.to_string()),
            ServersError::Sync(_) => DBusError::Failed(e.to_string()),
        }
    }
}

impl From<UpdateError> for DBusError {
    fn from(e: UpdateError) -> Self {
        DBusError::NotPossible(e.to_string())
    }
}

pub struct ServersObject {
    svc: Arc<ServersService>,
}

impl ServersObject {
    pub fn new(svc: Arc<ServersService>) -> Self {
        ServersObject { svc }
    }
}

/// The servers this client syncs from, and which one it uses.
#[interface(name = "org.gentoo.Gse1.Servers")]
impl ServersObject {
    /// The server in use; empty when none is configured or reachable.
    #[zbus(property)]
    fn current(&self) -> String {
        self.svc.snapshot().current
    }

    /// True while an administrator's choice holds (until Unpin or a restart).
    #[zbus(property)]
    fn pinned(&self) -> bool {
        self.svc.snapshot().pinned
    }

    /// Each server: name, URL, state (unknown, up, down), latency in ms, advertised load, failed probes in a row.
    #[zbus(property)]
    fn servers(&self) -> Vec<ServerRow> {
        self.svc.snapshot().servers.into_iter().map(ServerRow::from).collect()
    }

    /// The last sync as JSON: time, server, result (ok, unchanged or the error), changed files.
    #[zbus(property)]
    fn last_sync(&self) -> String {
        serde_json::to_string(&self.svc.snapshot().last_sync).unwrap_or_default()
    }

    /// Use this server until Unpin() or a restart.
    async fn switch(
        &self,
        name: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DBusError> {
        super::bounded("the server name", &name, super::limits::NAME)?;
        super::auth::authorize(conn, &header, super::auth::Action::Servers).await?;
        Ok(self.svc.switch_to(&name)?)
    }

    /// Let the client choose its server again.
    async fn unpin(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DBusError> {
        super::auth::authorize(conn, &header, super::auth::Action::Servers).await?;
        self.svc.unpin();
        Ok(())
    }

    /// Sync config.d from the current server now; returns the result as JSON.
    async fn sync(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, DBusError> {
        super::auth::authorize(conn, &header, super::auth::Action::Servers).await?;
        let status = self.svc.sync_now().await?;
        serde_json::to_string(&status).map_err(|e| DBusError::Failed(e.to_string()))
    }

    /// Emitted on every change of server.
    #[zbus(signal)]
    async fn switched(emitter: &SignalEmitter<'_>, old: &str, new: &str, reason: &str) -> zbus::Result<()>;
}

pub struct UpdateObject {
    svc: Arc<UpdateService>,
    servers: Arc<ServersService>,
}

impl UpdateObject {
    pub fn new(servers: Arc<ServersService>) -> Self {
        UpdateObject { svc: servers.update.clone(), servers }
    }
}

/// Whether a newer image is published on this client's channel.
#[interface(name = "org.gentoo.Gse1.Update")]
impl UpdateObject {
    /// The version of the running image.
    #[zbus(property)]
    fn local_version(&self) -> String {
        self.svc.snapshot().local_version
    }

    /// The newest version on the channel, once checked.
    #[zbus(property)]
    fn available_version(&self) -> String {
        self.svc.snapshot().available_version
    }

    /// unknown, up-to-date, available, approved, declined, downloading,
    /// installing, installed, trial, failed or error.
    #[zbus(property)]
    fn state(&self) -> String {
        self.svc.snapshot().state.to_string()
    }

    /// 0.0-1.0 of the current step (downloading or installing).
    #[zbus(property)]
    fn progress(&self) -> f64 {
        self.svc.snapshot().progress
    }

    /// Bytes of the current step done.
    #[zbus(property)]
    fn bytes_done(&self) -> u64 {
        self.svc.snapshot().bytes_done
    }

    /// Bytes of the current step in all: to fetch, or to write.
    #[zbus(property)]
    fn bytes_total(&self) -> u64 {
        self.svc.snapshot().bytes_total
    }

    /// The slot the new version goes into.
    #[zbus(property)]
    fn target_slot(&self) -> String {
        self.svc.snapshot().target_slot
    }

    /// Why the state is error, otherwise empty.
    #[zbus(property)]
    fn detail(&self) -> String {
        self.svc.snapshot().detail
    }

    /// Check the channel on the current server now; returns the new state.
    async fn check(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, DBusError> {
        super::auth::authorize(conn, &header, super::auth::Action::CheckUpdate).await?;
        if self.servers.snapshot().current.is_empty() {
            return Err(DBusError::NotPossible("no server is in use".into()));
        }
        self.svc.check(self.servers.urls_current_first()).await;
        Ok(self.svc.snapshot().state.to_string())
    }

    /// Take the available version.
    async fn approve(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DBusError> {
        super::auth::authorize(conn, &header, super::auth::Action::DecideUpdate).await?;
        self.svc.approve()?;
        // After a restart nothing was fetched yet: the check starts the download.
        if !self.svc.has_offer() && !self.servers.snapshot().current.is_empty() {
            self.svc.check(self.servers.urls_current_first()).await;
        }
        Ok(())
    }

    /// Stay on the running version.
    async fn decline(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DBusError> {
        super::auth::authorize(conn, &header, super::auth::Action::DecideUpdate).await?;
        Ok(self.svc.decline()?)
    }

    /// A version newer than the running one was published.
    #[zbus(signal)]
    async fn update_available(emitter: &SignalEmitter<'_>, version: &str) -> zbus::Result<()>;
}

/// `PropertiesChanged` for one change of the servers' state.
pub(super) async fn emit_servers(
    iface: InterfaceRef<ServersObject>,
    last: ServersSnapshot,
    now: ServersSnapshot,
) -> zbus::Result<()> {
    let (obj, em) = (iface.get().await, iface.signal_emitter());
    if now.current != last.current {
        obj.current_changed(em).await?;
    }
    if now.pinned != last.pinned {
        obj.pinned_changed(em).await?;
    }
    if now.servers != last.servers {
        obj.servers_changed(em).await?;
    }
    if now.last_sync != last.last_sync {
        obj.last_sync_changed(em).await?;
    }
    Ok(())
}

/// `PropertiesChanged` and `UpdateAvailable` for one change of the update state.
pub(super) async fn emit_update(
    iface: InterfaceRef<UpdateObject>,
    last: UpdateSnapshot,
    now: UpdateSnapshot,
) -> zbus::Result<()> {
    let (obj, em) = (iface.get().await, iface.signal_emitter());
    if now.available_version != last.available_version {
        obj.available_version_changed(em).await?;
        if matches!(now.state, UpdateState::Available | UpdateState::Approved) {
            UpdateObject::update_available(em, &now.available_version).await?;
        }
    }
    if now.state != last.state {
        obj.state_changed(em).await?;
    }
    if now.detail != last.detail {
        obj.detail_changed(em).await?;
    }
    if now.progress != last.progress {
        obj.progress_changed(em).await?;
    }
    if now.bytes_done != last.bytes_done {
        obj.bytes_done_changed(em).await?;
    }
    if now.bytes_total != last.bytes_total {
        obj.bytes_total_changed(em).await?;
    }
    if now.target_slot != last.target_slot {
        obj.target_slot_changed(em).await?;
    }
    Ok(())
}

/// `Switched` for every change of server, as the service announces them.
pub(super) async fn forward_switches(conn: &Connection, mut switches: broadcast::Receiver<Switch>) -> zbus::Result<()> {
    let iface = conn.object_server().interface::<_, ServersObject>(OBJECT_PATH).await?;
    tokio::spawn(async move {
        loop {
            let sw = match switches.recv().await {
                Ok(sw) => sw,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let from = sw.from.as_deref().unwrap_or("");
            if let Err(e) = ServersObject::switched(iface.signal_emitter(), from, &sw.to, &sw.reason).await {
                warn!(error = %e, "could not emit Switched");
            }
        }
    });
    Ok(())
}
