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
use zbus::Connection;

pub use boot::BootObject;
pub use config::ConfigObject;
pub use health::HealthObject;
pub use network::NetworkObject;
pub use servers::{ServersObject, UpdateObject};

use crate::{
    confd::ConfigService,
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
    health::forward_changes(conn.clone(), services.health.subscribe()).await?;
    server.at(OBJECT_PATH, ServersObject::new(services.servers.clone())).await?;
    server.at(OBJECT_PATH, UpdateObject::new(services.servers.clone())).await?;
    config::forward_changes(conn.clone(), services.config.subscribe()).await?;
    servers::forward_changes(conn.clone(), services.servers.clone()).await?;
    server.at(OBJECT_PATH, NetworkObject::new(services.network.clone())).await?;
    network::forward_changes(conn.clone(), services.network.clone()).await?;
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
