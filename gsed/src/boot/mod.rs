//! Early boot (DESIGN §5, §6): decide from the health journal and the signed boot
//! flags whether the primary slot can be trusted, act on the failure policy
//! (bailout or repair), mount the chosen slot with the stateless layout and write
//! `/run/gse/boot.json` for the running system.

pub mod blank;
pub mod copy;
pub mod decide;
pub mod devices;
pub mod flag;
pub mod kernel;
pub mod layout;
pub mod loader;
pub mod mount;
pub mod provision;
pub mod slots;
pub mod state;
pub mod subvol;

use std::{path::Path, sync::Arc, time::Duration};

use gse_dbus::boot::BootRecord;
use tracing::{info, warn};

use crate::{
    config::live::ConfigService,
    fsutil::write_atomic,
    journal::{self, Journal},
    network::NetworkService,
    paths::Paths,
    servers::{ServersService, service::ServersError},
};
use decide::decide;
use flag::{FlagKey, FlagState};
use kernel::Handoff;
use mount::{MountError, Mounts};
use slots::Slots;
use state::BootState;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Tool(String),
    #[error("no machine key at {path} ({source}); run `gsectl provision` first")]
    NoKey { path: String, source: std::io::Error },
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
}

pub struct BootService {
    paths: Paths,
    config: Arc<ConfigService>,
    network: Arc<NetworkService>,
    /// The kernel's boot id (seeds the server choice).
    boot_id: String,
    /// How long to wait for slot devices to appear.
    pub device_wait: Duration,
    /// Online once per early boot: `gsed --early` starts it as it starts; an
    /// update offer, Prepare or an install waits for that same step.
    online: tokio::sync::OnceCell<Online>,
    /// The servers picked while going online, for an update offer.
    servers: std::sync::Mutex<Option<Arc<ServersService>>>,
    handoff: std::sync::OnceLock<Option<Handoff>>,
}

/// What the network and sync steps of early boot found.
#[derive(Debug, Clone, Default)]
pub struct Online {
    pub network: String,
    pub sync: Option<String>,
}

impl BootService {
    pub fn new(paths: &Paths, config: Arc<ConfigService>, boot_id: &str) -> Arc<Self> {
        let network = NetworkService::new(paths, config.clone());
        Arc::new(BootService {
            paths: paths.clone(),
            config,
            network,
            boot_id: boot_id.to_owned(),
            device_wait: Duration::from_secs(10),
            online: tokio::sync::OnceCell::new(),
            servers: std::sync::Mutex::new(None),
            handoff: std::sync::OnceLock::new(),
        })
    }

    /// DESIGN §6: when a server is configured, bring the wired network up (waiting
    /// at most network.conf's `wait`), pick a server and sync config.d from it, so
    /// the boot decision and the mounted /etc use the newest configuration.
    /// Without a network or server the boot goes on with what it has.
    pub async fn go_online(&self) -> Online {
        self.online.get_or_init(|| self.connect()).await.clone()
    }

    async fn connect(&self) -> Online {
        if let Some(h) = self.handoff() {
            // The early boot before the kernel change went online already.
            return Online { network: h.record.network.clone(), sync: h.record.sync.clone() };
        }
        let settings = self.config.current().loaded.settings.clone();
        if settings.servers.server.is_empty() {
            return Online { network: "not needed: no server is configured".into(), sync: None };
        }
        let net = self.network.clone();
        let task = tokio::spawn(net.run());
        let wait = settings.network.wait.get();
        let mut rx = self.network.subscribe();
        let up = tokio::time::timeout(wait, async {
            loop {
                let found = rx
                    .borrow_and_update()
                    .values()
                    .find(|s| s.state.is_up())
                    .map(|s| format!("up: {} {}", s.name, s.addresses.join(",")));
                if let Some(f) = found {
                    return f;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await;
        let network = match up {
            Ok(s) => s,
            Err(_) => {
                task.abort();
                warn!("no network within {}; booting offline", settings.network.wait);
                return Online { network: format!("offline: no address within {}", settings.network.wait), sync: None };
            }
        };
        let deadline = settings.servers.boot_deadline;
        let until = std::time::Instant::now() + deadline.get();
        // The same pick and sync as the running daemon's, bounded by the deadline.
        let servers = ServersService::new(&self.paths, self.config.clone(), &self.boot_id);
        let sync = match tokio::time::timeout(deadline.get(), servers.pick_and_sync(until)).await {
            Ok(Ok(s)) if s.changed.is_empty() => format!("config.d is up to date with {}", s.server),
            Ok(Ok(s)) => format!("synced config.d from {}: {} file(s) changed", s.server, s.changed.len()),
            Ok(Err(ServersError::NoServer)) => "no server answered; using the cached config.d".into(),
            Ok(Err(ServersError::Sync(e))) => {
                format!("sync from {} failed, using the cached config.d: {e}", servers.snapshot().current)
            }
            Ok(Err(e)) => format!("{e}; using the cached config.d"),
            Err(_) => format!("no sync within boot_deadline {deadline}; using the cached config.d"),
        };
        info!(%network, %sync, "early boot online");
        // The lease stays; the running gsed takes over the interface.
        task.abort();
        if let Ok(mut s) = self.servers.lock() {
            *s = Some(servers);
        }
        Online { network, sync: Some(sync) }
    }

    /// With `prompt_at_boot` and `policy = "ask"` (DESIGN §11): goes online and
    /// checks the channel; returns the version a person at the console may
    /// install now, and the bytes a full download would take.
    pub async fn offer_update(&self) -> Option<(String, u64)> {
        // The sync may bring the setting: online first (Prepare would go anyway).
        self.go_online().await;
        if self.handoff().is_some() {
            return None; // asked (or not) before the kernel change
        }
        let update = self.config.current().loaded.settings.update.clone();
        if !update.prompt_at_boot || update.policy != crate::config::UpdatePolicy::Ask {
            return None;
        }
        let servers = self.servers.lock().ok()?.clone()?;
        if servers.snapshot().current.is_empty() {
            return None;
        }
        servers.update.check(servers.urls_current_first()).await;
        let snap = servers.update.snapshot();
        if snap.state != gse_dbus::servers::UpdateState::Available {
            return None;
        }
        let bytes = servers.update.offered().map_or(0, |c| c.packed);
        Some((snap.available_version, bytes))
    }

    /// Installs the offered version now (in the background; see [`Self::update_status`]).
    pub fn install_update(&self) -> Result<(), String> {
        let servers = self.servers.lock().ok().and_then(|s| s.clone()).ok_or("no update was offered")?;
        servers.update.approve().map_err(|e| e.to_string())
    }

    /// The update's state while early boot installs it.
    pub fn update_status(&self) -> Option<crate::servers::update::UpdateSnapshot> {
        Some(self.servers.lock().ok()?.as_ref()?.update.snapshot())
    }

    /// The decision this early boot was handed by the one before it, under
    /// another kernel (see [`kernel`]); taken once per early boot.
    fn handoff(&self) -> Option<&Handoff> {
        self.handoff.get_or_init(|| Handoff::take(&self.paths)).as_ref()
    }

    /// The whole early-boot sequence for the new root at `sysroot`. When the
    /// slot runs a kernel of its own, the reply names it in `kexec` and
    /// nothing stays mounted: the hook starts that kernel.
    pub fn prepare(&self, sysroot: &Path, online: Online) -> Result<BootRecord, BootError> {
        let cfg = self.config_now();
        let settings = &cfg.loaded.settings;
        let key_path = self.paths.flag_key();
        let key = FlagKey::load(&key_path)
            .map_err(|source| BootError::NoKey { path: key_path.display().to_string(), source })?;
        self.hand_key_to_system();
        let slots = Slots { paths: &self.paths, settings, device_wait: self.device_wait };
        let running = kernel::running_release(&self.paths);
        let (mut record, may_kexec) = match self.handoff() {
            Some(h) => {
                info!(slot = %h.record.slot, action = %h.record.action, kernel = %running, "carrying out the decision handed over");
                (h.record.clone(), false)
            }
            None => {
                Handoff::clear(&self.paths);
                let mut r = self.decide(&slots, &key)?;
                (r.network, r.sync) = (online.network, online.sync);
                (r, true)
            }
        };
        record.kernel = running;

        let mut mounts = Mounts::new();
        slots.mount(&mut mounts, &record.slot, sysroot, false)?;
        if may_kexec && self.hand_over(sysroot, &mut record) {
            return Ok(record); // `mounts` goes: the slot is released for the next kernel
        }
        self.finish(mounts, settings, sysroot, record)
    }

    /// The stateless layout below the slot mounted at `sysroot`, then
    /// `/run/gse/boot.json`; everything stays mounted for the new root.
    fn finish(
        &self,
        mut mounts: Mounts,
        settings: &crate::config::Settings,
        sysroot: &Path,
        mut record: BootRecord,
    ) -> Result<BootRecord, BootError> {
        record.warnings.extend(layout::mount_layout(&mut mounts, settings, &self.paths, sysroot)?);
        let json = serde_json::to_vec_pretty(&record).expect("record serialises");
        let path = self.paths.boot_json();
        write_atomic(&path, &json, 0o644).map_err(|e| BootError::Io(format!("writing {}", path.display()), e))?;
        mounts.keep();
        Ok(record)
    }

    /// The configuration in force; what is wrong with it goes to the console
    /// (the last good value of each file stays).
    fn config_now(&self) -> Arc<crate::config::live::ConfigState> {
        let cfg = self.config.current();
        for e in &cfg.errors {
            warn!("config: {e}");
        }
        cfg
    }

    /// The running system may not mount /boot; its gsed signs the flags of
    /// the updates it installs with this copy (RAM only, root only).
    fn hand_key_to_system(&self) {
        if let Err(e) = std::fs::read(self.paths.flag_key()).and_then(|k| {
            let mut f = crate::fsutil::create_private(&self.paths.run_flag_key(), 0o600)?;
            std::io::Write::write_all(&mut f, &k)
        }) {
            warn!(error = %e, "cannot hand the machine key to the running system; updates will need /boot mounted");
        }
    }

    /// Decides the slot from the journal, the state and the flags, counts the
    /// boot, repairs and renews flags as decided (DESIGN §5).
    fn decide(&self, slots: &Slots, key: &FlagKey) -> Result<BootRecord, BootError> {
        let (journal, _) = Journal::open(&self.paths.health_journal())?;
        let state_path = self.paths.boot_state();
        let old = BootState::load(&state_path);
        let flags = slots.read_flags(key);
        let now = journal::now();
        let d = decide(&slots.settings.boot, journal.records(), &old, &flags, now);
        info!(slot = %d.slot, action = ?d.action, reason = %d.reason, "boot decision");

        let save = |s: &BootState| {
            s.save(&state_path).map_err(|e| BootError::Io(format!("saving {}", state_path.display()), e))
        };
        // Counting this boot comes first: a boot that dies later (a kernel
        // that panics included) must still count.
        save(&d.state)?;
        if let Some(m) = &d.repair {
            let fresh = d.write_flags.get(&m.target).cloned().expect("a repair carries a fresh flag");
            info!(target = %m.target, source = %m.source, "repairing");
            slots.repair(&m.target, &m.source, &fresh, key)?;
            save(&BootState { repair: None, ..d.state.clone() })?;
        }
        for (slot, f) in d.write_flags.iter().filter(|(s, _)| d.repair.as_ref().is_none_or(|m| m.target != **s)) {
            slots.write_flag(slot, f, key)?;
        }
        let booted =
            d.write_flags.get(&d.slot).cloned().or_else(|| flags.get(&d.slot).and_then(FlagState::flag).cloned());
        Ok(BootRecord {
            slot: d.slot.clone(),
            action: d.action,
            reason: d.reason.clone(),
            flags: flags.iter().map(|(s, f)| (s.clone(), f.to_string())).collect(),
            flag: flags.get(&d.slot).map_or("missing", FlagState::name).into(),
            healthy_cycles: booted.as_ref().map_or(0, |f| f.healthy_cycles),
            image_version: booted.map(|f| f.image_version).unwrap_or_default(),
            attempts: d.state.attempts.clone(),
            previous: d.last_boot.as_ref().map(|l| l.verdict),
            time: now,
            ..BootRecord::default()
        })
    }

    /// When the slot mounted at `sysroot` carries a kernel other than the
    /// running one: writes the handoff, loads that kernel and notes it in
    /// `record.kexec` (true). A kernel that cannot be started is refused with
    /// a warning, and the slot boots on the running kernel (false).
    fn hand_over(&self, sysroot: &Path, record: &mut BootRecord) -> bool {
        let k = match kernel::find(sysroot, true) {
            Ok(Some(k)) if k.release != record.kernel => k,
            Ok(_) => return false,
            Err(e) => {
                warn!(slot = %record.slot, error = %e, "not starting the slot's own kernel");
                record.warnings.push(format!("slot {}: not starting its own kernel: {e}", record.slot));
                return false;
            }
        };
        let h = Handoff { nonce: self.boot_id.clone(), release: k.release.clone(), record: record.clone() };
        let loaded = h.save(&self.paths).and_then(|()| {
            if !self.paths.is_real_root() {
                info!(kernel = %k.release, "--root: the slot's kernel is not loaded into this machine's");
                return Ok(());
            }
            let cmdline = std::fs::read_to_string(self.paths.kernel_cmdline()).unwrap_or_default();
            kernel::load(sysroot, &k, &kernel::next_cmdline(&cmdline, &h.nonce))
        });
        if let Err(e) = loaded {
            Handoff::clear(&self.paths);
            warn!(slot = %record.slot, error = %e, "cannot load the slot's own kernel");
            record.warnings.push(format!("slot {}: cannot load its own kernel {}: {e}", record.slot, k.release));
            return false;
        }
        info!(slot = %record.slot, from = %record.kernel, to = %k.release, "the slot runs its own kernel: handing over");
        record.kexec = Some(k.release);
        true
    }
}
