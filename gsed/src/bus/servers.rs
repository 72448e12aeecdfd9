//! `org.gentoo.Gse1.Servers` and `org.gentoo.Gse1.Update` over [`ServersService`].

use std::sync::Arc;

use gse_dbus::{DBusError, OBJECT_PATH};
use tracing::warn;
use zbus::{Connection, interface, message::Header, object_server::SignalEmitter};

use crate::servers::{ServersService, UpdateService, service::ServersError, update::UpdateError};

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
    fn servers(&self) -> Vec<(String, String, String, f64, f64, u32)> {
        self.svc
            .snapshot()
            .servers
            .into_iter()
            .map(|s| (s.name, s.url, s.state, s.latency_ms, s.load, s.failures))
            .collect()
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

    /// unknown, up-to-date, available, approved, declined or error.
    #[zbus(property)]
    fn state(&self) -> String {
        self.svc.snapshot().state
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
        let current = self.servers.snapshot().current;
        let url = self.servers.snapshot().servers.into_iter().find(|s| s.name == current).map(|s| s.url);
        let url = url.ok_or_else(|| DBusError::NotPossible("no server is in use".into()))?;
        self.svc.check(&url).await;
        Ok(self.svc.snapshot().state)
    }

    /// Take the available version.
    async fn approve(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DBusError> {
        super::auth::authorize(conn, &header, super::auth::Action::DecideUpdate).await?;
        Ok(self.svc.approve()?)
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

pub(super) async fn forward_changes(conn: Connection, svc: Arc<ServersService>) -> zbus::Result<()> {
    let servers = conn.object_server().interface::<_, ServersObject>(OBJECT_PATH).await?;
    let update = conn.object_server().interface::<_, UpdateObject>(OBJECT_PATH).await?;
    let mut rx = svc.subscribe();
    let mut switches = svc.switches();
    let mut up = svc.update.subscribe();
    let mut last = rx.borrow_and_update().clone();
    let mut last_up = up.borrow_and_update().clone();
    tokio::spawn(async move {
        loop {
            let sent = tokio::select! {
                sw = switches.recv() => match sw {
                    Ok(sw) => ServersObject::switched(servers.signal_emitter(), sw.from.as_deref().unwrap_or(""), &sw.to, &sw.reason).await,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Ok(()),
                    Err(_) => return,
                },
                changed = rx.changed() => {
                    if changed.is_err() { return; }
                    let now = rx.borrow_and_update().clone();
                    let (obj, em) = (servers.get().await, servers.signal_emitter());
                    let mut r = Ok(());
                    if now.current != last.current { r = r.and(obj.current_changed(em).await); }
                    if now.pinned != last.pinned { r = r.and(obj.pinned_changed(em).await); }
                    if now.servers != last.servers { r = r.and(obj.servers_changed(em).await); }
                    if now.last_sync != last.last_sync { r = r.and(obj.last_sync_changed(em).await); }
                    last = now;
                    r
                }
                changed = up.changed() => {
                    if changed.is_err() { return; }
                    let now = up.borrow_and_update().clone();
                    let (obj, em) = (update.get().await, update.signal_emitter());
                    let mut r = Ok(());
                    if now.available_version != last_up.available_version {
                        r = r.and(obj.available_version_changed(em).await);
                        if now.state == "available" || now.state == "approved" {
                            r = r.and(UpdateObject::update_available(em, &now.available_version).await);
                        }
                    }
                    if now.state != last_up.state { r = r.and(obj.state_changed(em).await); }
                    if now.detail != last_up.detail { r = r.and(obj.detail_changed(em).await); }
                    last_up = now;
                    r
                }
            };
            if let Err(e) = sent {
                warn!(error = %e, "could not emit a servers signal");
            }
        }
    });
    Ok(())
}
