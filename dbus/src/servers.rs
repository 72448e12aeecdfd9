//! `org.gentoo.Gse1.Servers` and `org.gentoo.Gse1.Update`: which server a client
//! uses, config.d sync, and the version check.

use zbus::proxy;

use crate::DBusError;

/// One row of the `Servers` property: name, URL, state (`unknown`, `up`,
/// `down`), latency in ms, advertised load, failed probes in a row.
pub type ServerRow = (String, String, String, f64, f64, u32);

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

    /// `unknown`, `up-to-date`, `available`, `approved`, `declined` or `error`.
    #[zbus(property)]
    fn state(&self) -> Result<String, DBusError>;

    /// Why the state is `error`, otherwise empty.
    #[zbus(property)]
    fn detail(&self) -> Result<String, DBusError>;

    /// Check the channel on the current server now; returns the new state.
    fn check(&self) -> Result<String, DBusError>;

    fn approve(&self) -> Result<(), DBusError>;

    fn decline(&self) -> Result<(), DBusError>;

    #[zbus(signal)]
    fn update_available(&self, version: &str) -> zbus::Result<()>;
}
