//! The D-Bus layer: interface objects that only translate between the bus and the
//! plain services, and the tasks that turn service state changes into signals.
//! Errors are mapped to [`DBusError`] here, once.

mod auth;
mod boot;
mod config;
mod health;
mod network;
mod servers;

use std::sync::Arc;

use gse_dbus::{DBusError, OBJECT_PATH};
use tokio::sync::watch;
use tracing::warn;
use zbus::{
    Connection,
    object_server::{Interface, InterfaceRef},
};

pub use boot::BootObject;
pub use config::ConfigObject;
pub use health::HealthObject;
pub use network::NetworkObject;
pub use servers::{ServersObject, UpdateObject};

use crate::{
    config::live::ConfigService,
    health::{HealthError, HealthService},
    network::NetworkService,
    servers::ServersService,
};

/// The services the daemon exports.
pub struct Services {
    pub config: Arc<ConfigService>,
    pub health: Arc<HealthService>,
    pub servers: Arc<ServersService>,
    pub network: Arc<NetworkService>,
}

/// Exports every interface on `conn` at [`OBJECT_PATH`] and starts forwarding state
/// changes as signals. Production and tests both call this.
pub async fn serve(conn: &Connection, services: &Services) -> zbus::Result<()> {
    let server = conn.object_server();
    server.at(OBJECT_PATH, HealthObject::new(services.health.clone())).await?;
    server.at(OBJECT_PATH, ConfigObject::new(services.config.clone())).await?;
    server.at(OBJECT_PATH, ServersObject::new(services.servers.clone())).await?;
    server.at(OBJECT_PATH, UpdateObject::new(services.servers.clone())).await?;
    server.at(OBJECT_PATH, NetworkObject::new(services.network.clone())).await?;
    forward(conn, services.health.subscribe(), health::emit).await?;
    forward(conn, services.config.subscribe(), config::emit).await?;
    forward(conn, services.servers.subscribe(), servers::emit_servers).await?;
    forward(conn, services.servers.update.subscribe(), servers::emit_update).await?;
    forward(conn, services.network.subscribe(), network::emit).await?;
    servers::forward_switches(conn, services.servers.switches()).await
}

/// On every change of a service's state, runs `emit(interface, before, now)` on
/// a task of its own: the one loop that turns state into `PropertiesChanged` and
/// signals, so each interface only says which of its properties changed.
async fn forward<T, I, F, Fut>(conn: &Connection, mut rx: watch::Receiver<T>, emit: F) -> zbus::Result<()>
where
    T: Clone + Send + Sync + 'static,
    I: Interface,
    F: Fn(InterfaceRef<I>, T, T) -> Fut + Send + 'static,
    Fut: Future<Output = zbus::Result<()>> + Send,
{
    let iface = conn.object_server().interface::<_, I>(OBJECT_PATH).await?;
    let mut last = rx.borrow_and_update().clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let now = rx.borrow_and_update().clone();
            if let Err(e) = emit(iface.clone(), last, now.clone()).await {
                warn!(interface = %I::name(), error = %e, "could not emit a signal");
            }
            last = now;
        }
    });
    Ok(())
}

/// Longest string argument each method takes: nothing a caller sends can make
/// gsed's journal, its replies or its memory grow without bound.
pub(crate) mod limits {
    pub const REASON: usize = 1024;
    pub const NAME: usize = 256;
    pub const KEY: usize = 512;
    pub const PATH: usize = 4096;
}

/// Refuses an argument longer than `max` bytes, naming it.
pub(crate) fn bounded(what: &str, s: &str, max: usize) -> Result<(), DBusError> {
    if s.len() > max {
        return Err(DBusError::InvalidArgs(format!("{what} is {} bytes long; at most {max} are accepted", s.len())));
    }
    Ok(())
}

impl From<HealthError> for DBusError {
    fn from(e: HealthError) -> Self {
        match e {
            HealthError::EmptyReason => DBusError::InvalidArgs(e.to_string()),
            HealthError::Journal(_) => DBusError::Failed(e.to_string()),
        }
    }
}
