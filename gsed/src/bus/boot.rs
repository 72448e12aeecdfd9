//! `org.gentoo.Gse1.Boot` over [`BootService`], served by `gsed --early` only.

use std::{path::PathBuf, sync::Arc};

use gse_dbus::DBusError;
use tokio::sync::Notify;
use zbus::interface;

use crate::boot::{BootError, BootService, Online};

pub struct BootObject {
    svc: Arc<BootService>,
    finished: Arc<Notify>,
}

impl BootObject {
    pub fn new(svc: Arc<BootService>, finished: Arc<Notify>) -> Self {
        BootObject { svc, finished }
    }
}

impl From<BootError> for DBusError {
    fn from(e: BootError) -> Self {
        match e {
            BootError::Config(m) => DBusError::InvalidConfig(m),
            BootError::NoKey { .. } => DBusError::NotPossible(e.to_string()),
            other => DBusError::Failed(other.to_string()),
        }
    }
}

fn absolute(sysroot: String) -> Result<PathBuf, DBusError> {
    super::bounded("sysroot", &sysroot, super::limits::PATH)?;
    if !sysroot.starts_with('/') {
        return Err(DBusError::InvalidArgs(format!("sysroot '{sysroot}' must be an absolute path")));
    }
    Ok(PathBuf::from(sysroot))
}

impl BootObject {
    /// Goes online (once per early boot), then runs `f` off the async threads:
    /// it mounts, formats and unpacks.
    async fn online_then<T: Send + 'static>(
        &self,
        f: impl FnOnce(&BootService, Online) -> Result<T, BootError> + Send + 'static,
    ) -> Result<T, DBusError> {
        let online = self.svc.go_online().await;
        let svc = self.svc.clone();
        Ok(tokio::task::spawn_blocking(move || f(&svc, online))
            .await
            .map_err(|e| DBusError::Failed(format!("early boot crashed: {e}")))??)
    }
}

fn json(record: &gse_dbus::boot::BootRecord) -> Result<String, DBusError> {
    serde_json::to_string(record).map_err(|e| DBusError::Failed(e.to_string()))
}

/// Early boot: decide the slot and mount the new root.
#[interface(name = "org.gentoo.Gse1.Boot")]
impl BootObject {
    /// Decide the slot, act on the failure policy, mount the new root at sysroot with the
    /// stateless layout and write /run/gse/boot.json; returns the boot record as JSON.
    /// When the slot carries a kernel of its own, the record names it in "kexec":
    /// that kernel is loaded, nothing is mounted, and the hook starts it.
    async fn prepare(&self, sysroot: String) -> Result<String, DBusError> {
        let sysroot = absolute(sysroot)?;
        json(&self.online_then(move |svc, online| svc.prepare(&sysroot, online)).await?)
    }

    /// On a machine with no GSE system (DESIGN §12): lay out the disk of drives.conf (one
    /// that holds data only with wipe = true, force, or this machine's own unfinished
    /// install; never a GSE system), install the server's image into every slot and write
    /// the boot loader; returns one line saying what was done.
    async fn install(&self, force: bool) -> Result<String, DBusError> {
        self.online_then(move |svc, online| svc.install(&online, force)).await
    }

    /// Diskless (gse.install=diskless): unpack the server's image into RAM at sysroot
    /// with the stateless layout and write /run/gse/boot.json; returns the boot record as JSON.
    async fn prepare_diskless(&self, sysroot: String) -> Result<String, DBusError> {
        let sysroot = absolute(sysroot)?;
        json(&self.online_then(move |svc, online| svc.prepare_diskless(&sysroot, online)).await?)
    }

    /// With prompt_at_boot under policy ask: the version a person at the console
    /// may install before the boot goes on, as JSON `{"version", "bytes"}`, or
    /// an empty string.
    async fn offer_update(&self) -> String {
        match self.svc.offer_update().await {
            Some((version, bytes)) => serde_json::json!({ "version": version, "bytes": bytes }).to_string(),
            None => String::new(),
        }
    }

    /// Install the offered version into the slot that is not primary; the next
    /// Prepare boots it as a trial. Returns at once: follow UpdateStatus.
    fn install_update(&self) -> Result<(), DBusError> {
        self.svc.install_update().map_err(DBusError::NotPossible)
    }

    /// The update as `gsectl update --json` shows it.
    fn update_status(&self) -> Result<String, DBusError> {
        let s = self.svc.update_status().ok_or_else(|| DBusError::NotPossible("no update was offered".into()))?;
        serde_json::to_string(&s).map_err(|e| DBusError::Failed(e.to_string()))
    }

    /// The boot is handed over: gsed --early exits.
    fn finish(&self) {
        self.finished.notify_one();
    }
}
