//! `org.gentoo.Gse1.Servers` and `org.gentoo.Gse1.Update`: which server a client
//! uses, config.d sync, and the version check.

use zbus::proxy;

use crate::DBusError;

use serde::{Deserialize, Serialize};

wire_enum!(
    "server state",
    /// Whether a server answers its probes.
    #[derive(Default)]
    pub enum ServerState {
        /// Not probed yet.
        #[default]
        Unknown = "unknown",
        Up = "up",
        /// `fail_after` probes in a row failed.
        Down = "down",
    }
);

wire_enum!(
    "update state",
    /// The `State` property of the Update interface.
    #[derive(Default)]
    pub enum UpdateState {
        /// The channel was not checked yet.
        #[default]
        Unknown = "unknown",
        UpToDate = "up-to-date",
        /// A newer version is published; policy `ask` waits for an administrator.
        Available = "available",
        Approved = "approved",
        Declined = "declined",
        Downloading = "downloading",
        Installing = "installing",
        /// Installed into the other slot; waits for the next boot.
        Installed = "installed",
        /// Running the new version on probation.
        Trial = "trial",
        /// The new version failed its trial; not retried until a newer one appears.
        Failed = "failed",
        /// The last check failed; `Detail` says why.
        Error = "error",
    }
);

/// One row of the `Servers` property: name, URL, state, latency in ms,
/// advertised load, failed probes in a row.
pub type ServerRow = (String, String, String, f64, f64, u32);

/// One server as a client sees it; crosses the bus as a [`ServerRow`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Server {
    pub name: String,
    pub url: String,
    pub state: ServerState,
    pub latency_ms: f64,
    pub load: f64,
    pub failures: u32,
}

impl From<Server> for ServerRow {
    fn from(s: Server) -> Self {
        (s.name, s.url, s.state.as_str().into(), s.latency_ms, s.load, s.failures)
    }
}

impl TryFrom<ServerRow> for Server {
    type Error = String;
    fn try_from((name, url, state, latency_ms, load, failures): ServerRow) -> Result<Self, String> {
        Ok(Server { name, url, state: state.parse()?, latency_ms, load, failures })
    }
}

#[proxy(interface = "org.gentoo.Gse1.Servers", default_service = "org.gentoo.Gse1", default_path = "/org/gentoo/Gse1")]
pub trait Servers {
    /// The server in use; empty when none is configured or reachable.
    #[zbus(property)]
    fn current(&self) -> Result<String, DBusError>;

    /// True while an administrator's choice holds (until Unpin or a restart).
    #[zbus(property)]
    fn pinned(&self) -> Result<bool, DBusError>;

    #[zbus(property)]
    fn servers(&self) -> Result<Vec<ServerRow>, DBusError>;

    /// The last sync as JSON: time, server, result (`ok`, `unchanged` or the error), changed files.
    #[zbus(property)]
    fn last_sync(&self) -> Result<String, DBusError>;

    /// Use this server until Unpin() or a restart.
    fn switch(&self, name: &str) -> Result<(), DBusError>;

    fn unpin(&self) -> Result<(), DBusError>;

    /// Sync config.d from the current server now; returns the result as JSON.
    fn sync(&self) -> Result<String, DBusError>;

    /// Emitted on every change of server.
    #[zbus(signal)]
    fn switched(&self, old: &str, new: &str, reason: &str) -> zbus::Result<()>;
}

#[proxy(interface = "org.gentoo.Gse1.Update", default_service = "org.gentoo.Gse1", default_path = "/org/gentoo/Gse1")]
pub trait Update {
    #[zbus(property)]
    fn local_version(&self) -> Result<String, DBusError>;

    #[zbus(property)]
    fn available_version(&self) -> Result<String, DBusError>;

    /// An [`UpdateState`] by name.
    #[zbus(property)]
    fn state(&self) -> Result<String, DBusError>;

    /// Why the state is `error`, otherwise empty.
    #[zbus(property)]
    fn detail(&self) -> Result<String, DBusError>;

    /// 0.0-1.0 of the current step (downloading or installing).
    #[zbus(property)]
    fn progress(&self) -> Result<f64, DBusError>;

    #[zbus(property)]
    fn bytes_done(&self) -> Result<u64, DBusError>;

    #[zbus(property)]
    fn bytes_total(&self) -> Result<u64, DBusError>;

    /// The slot the new version goes into.
    #[zbus(property)]
    fn target_slot(&self) -> Result<String, DBusError>;

    /// Check the channel on the current server now; returns the new state.
    fn check(&self) -> Result<String, DBusError>;

    fn approve(&self) -> Result<(), DBusError>;

    fn decline(&self) -> Result<(), DBusError>;

    #[zbus(signal)]
    fn update_available(&self, version: &str) -> zbus::Result<()>;
}
