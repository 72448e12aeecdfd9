//! `gsectl boot` (the initramfs hook's driver: prepare, a blank machine's
//! install or diskless boot, the kexec into a slot's own kernel, the install
//! plan) and `gsectl provision`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use gse_dbus::{
    BusAddress,
    boot::{BootProxy, BootRecord},
};
use gsed::{boot::provision, paths::Paths};

use crate::Failure;

#[derive(Args, Debug)]
pub struct BootArgs {
    #[command(subcommand)]
    action: BootAction,
}

#[derive(Subcommand, Debug)]
enum BootAction {
    /// Decide the slot, mount it at SYSROOT with the stateless layout and write
    /// /run/gse/boot.json, through `gsed --early`; then let gsed --early exit.
    ///
    /// Exit 0: the new root is mounted at SYSROOT. Exit 4: the slot runs a
    /// kernel of its own, which is loaded; nothing is mounted, and the hook
    /// releases the disks and runs `gsectl boot kexec`.
    Prepare {
        #[arg(long)]
        sysroot: PathBuf,
        /// No GSE system on the disks (gse.install=diskless): run the server's
        /// image from RAM.
        #[arg(long)]
        diskless: bool,
    },
    /// On a machine with no GSE system (gse.install=auto|ask): lay out the disk
    /// of drives.conf, install the server's image into every slot and write the
    /// boot loader, through `gsed --early`; progress on stderr.
    Install {
        /// Erase a disk that holds data even if drives.conf says wipe = false.
        #[arg(long)]
        force: bool,
    },
    /// What an install would do to this machine's disk, from the config.d
    /// under --root; no change is made.
    Plan {
        /// config.d to read drives.conf from (default: the layers under --root).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Start the kernel `boot prepare` loaded (the disks released first).
    /// Refused under --root: a test never replaces this machine's kernel.
    Kexec,
}

/// `gsectl boot prepare`'s exit status when the slot's own kernel is to be started.
pub const EXIT_KEXEC: u8 = 4;

#[derive(Args, Debug)]
pub struct ProvisionArgs {
    /// Partition and format the disk named in controller/drives.conf first.
    #[arg(long)]
    format: bool,
    /// With --format: overwrite a disk that holds data even if drives.conf says wipe = false.
    #[arg(long)]
    force: bool,
    /// config.d to provision from (default: the layers under --root).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// `--bus` for early boot: the early socket under --root unless given.
pub async fn run(bus: Option<&BusAddress>, root: &std::path::Path, args: BootArgs) -> Result<u8, Failure> {
    let paths = Paths::new(root);
    let (sysroot, diskless) = match args.action {
        BootAction::Prepare { sysroot, diskless } => (sysroot, diskless),
        BootAction::Install { force } => return install(bus, &paths, force).await,
        BootAction::Plan { config } => return plan(&paths, config.as_deref()),
        BootAction::Kexec => return kexec(&paths),
    };
    let (addr, conn) = connect(bus, &paths).await?;
    let proxy = BootProxy::builder(&conn)
        .build()
        .await
        .map_err(|e| Failure::from_bus(e.into(), &addr, "reach gsed --early"))?;
    let result = if diskless {
        follow(&proxy, proxy.prepare_diskless(&sysroot.to_string_lossy())).await
    } else {
        offer_update(&proxy).await;
        proxy.prepare(&sysroot.to_string_lossy()).await
    };
    let _ = proxy.finish().await;
    let json = result.map_err(|e| Failure::from_bus(e, &addr, "prepare the boot"))?;
    let r: BootRecord = serde_json::from_str(&json)
        .map_err(|e| Failure::Error(format!("gsed --early sent a record this gsectl cannot read: {e}")))?;
    println!("{json}");
    if let Some(k) = &r.kexec {
        eprintln!("gse: slot {} ({}) runs its own kernel {k}; starting it: {}", r.slot, r.action, r.reason);
        return Ok(EXIT_KEXEC);
    }
    eprintln!("gse: booting slot {} ({}): {}", r.slot, r.action, r.reason);
    Ok(0)
}

async fn connect(bus: Option<&BusAddress>, paths: &Paths) -> Result<(BusAddress, zbus::Connection), Failure> {
    let addr =
        bus.cloned().unwrap_or_else(|| BusAddress::Address(format!("unix:path={}", paths.early_socket().display())));
    let conn = addr.connect_peer().await.map_err(|e| {
        Failure::Unreachable(format!("gsed --early is not answering on {addr} ({e}); the initramfs hook starts it"))
    })?;
    Ok((addr, conn))
}

/// Installs this blank machine through gsed --early (which stays up: the
/// hook restarts the machine afterwards).
async fn install(bus: Option<&BusAddress>, paths: &Paths, force: bool) -> Result<u8, Failure> {
    let (addr, conn) = connect(bus, paths).await?;
    let proxy = BootProxy::builder(&conn)
        .build()
        .await
        .map_err(|e| Failure::from_bus(e.into(), &addr, "reach gsed --early"))?;
    let done = follow(&proxy, proxy.install(force)).await.map_err(|e| Failure::from_bus(e, &addr, "install"))?;
    eprintln!("gse: installed: {done}");
    Ok(0)
}

/// The update's state as gsed --early reports it (`UpdateStatus`).
async fn update_status(proxy: &BootProxy<'_>) -> Option<serde_json::Value> {
    serde_json::from_str(&proxy.update_status().await.ok()?).ok()
}

/// Waits for `call` while printing the download's progress on the console:
/// a line whenever the state or the tenth of the step changes, and the state
/// it ended in.
async fn follow<T>(proxy: &BootProxy<'_>, call: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(call);
    let mut last = String::new();
    loop {
        let done = tokio::select! {
            r = &mut call => Some(r),
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => None,
        };
        if let Some(u) = update_status(proxy).await {
            let step = format!(
                "gse: {} {:>3.0}%",
                u["state"].as_str().unwrap_or(""),
                (u["progress"].as_f64().unwrap_or(0.0) * 10.0).floor() * 10.0
            );
            if step != last {
                let mb = |k: &str| u[k].as_u64().unwrap_or(0) >> 20;
                let version = u["available_version"].as_str().unwrap_or("");
                eprintln!("{step} ({} of {} MB of version {version})", mb("bytes_done"), mb("bytes_total"));
                last = step;
            }
        }
        if let Some(r) = done {
            return r;
        }
    }
}

/// `gsectl boot plan`: the disk drives.conf names, what it holds now, and
/// the layout an install would give it.
fn plan(paths: &Paths, config: Option<&std::path::Path>) -> Result<u8, Failure> {
    let loaded = crate::offline_config(paths, config)?;
    let d = &loaded.settings.drives;
    let layout: Vec<String> = d.partition.iter().map(|p| format!("{} {} {}", p.name, p.size, p.fstype)).collect();
    println!("disk {} ({}): {}; boot loader: {}", d.device, d.table, layout.join(", "), d.loader);
    if !std::path::Path::new(&d.device).exists() {
        println!("there is no disk {}; this machine has: {}", d.device, provision::disks().join(", "));
        return Ok(1);
    }
    let found = provision::signatures(&d.device).map_err(|e| Failure::Error(e.to_string()))?;
    if found.is_empty() {
        println!("{} is blank: nothing is erased", d.device);
    } else {
        println!("{} holds {}: ALL OF IT IS ERASED", d.device, found.join(", "));
    }
    Ok(0)
}

/// Starts the kernel early boot loaded. Returns only if that fails.
fn kexec(paths: &Paths) -> Result<u8, Failure> {
    if !paths.is_real_root() {
        return Err(Failure::Error(format!(
            "--root {} is set: not starting another kernel on this machine",
            paths.root().display()
        )));
    }
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_KEXEC);
    Err(Failure::Error(format!("cannot start the loaded kernel: {e}")))
}

/// How long the console question about a new version waits for an answer (then: no).
const PROMPT: std::time::Duration = std::time::Duration::from_secs(20);

/// `prompt_at_boot`: asks on the console whether to install the version the
/// server offers, and installs it with progress on the console. Any failure
/// here only means the boot goes on as it would have.
async fn offer_update(proxy: &BootProxy<'_>) {
    let Ok(offer) = proxy.offer_update().await else { return };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&offer) else { return };
    let (version, mb) = (v["version"].as_str().unwrap_or("?"), v["bytes"].as_u64().unwrap_or(0) >> 20);
    eprint!("gse: version {version} is available (up to {mb} MB to fetch). Install it now? [y/N] ");
    if !yes_within(PROMPT) {
        eprintln!("\ngse: not now; booting the installed version");
        return;
    }
    if let Err(e) = proxy.install_update().await {
        eprintln!("gse: cannot install: {e}");
        return;
    }
    // Settled when installed or failed; `follow` prints the steps meanwhile.
    let settled = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            match update_status(proxy).await {
                None => return None,
                Some(u) if matches!(u["state"].as_str(), Some("installed" | "error" | "failed")) => return Some(u),
                Some(_) => {}
            }
        }
    };
    let Some(u) = follow(proxy, settled).await else { return };
    if u["state"] == "installed" {
        eprintln!("gse: version {version} installed; booting it as a trial");
    } else {
        eprintln!("gse: the install failed: {}", u["detail"].as_str().unwrap_or(""));
    }
}

/// Whether a line starting with y or Y arrives on stdin within `wait`.
fn yes_within(wait: std::time::Duration) -> bool {
    use std::os::fd::AsFd;
    let stdin = std::io::stdin();
    let mut fds = [nix::poll::PollFd::new(stdin.as_fd(), nix::poll::PollFlags::POLLIN)];
    let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
    match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
        Ok(n) if n > 0 => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).is_ok() && line.trim_start().starts_with(['y', 'Y'])
        }
        _ => false,
    }
}

pub fn provision(root: &std::path::Path, args: ProvisionArgs) -> Result<u8, Failure> {
    let paths = Paths::new(root);
    let loaded = crate::offline_config(&paths, args.config.as_deref())?;
    let opts = provision::Options { format: args.format, force: args.force };
    let mut mounts = gsed::boot::mount::Mounts::new();
    provision::provision(&paths, &loaded.settings, &opts, &mut mounts, &mut |line| eprintln!("provision: {line}"))
        .map_err(|e| Failure::Error(format!("provisioning failed: {e}")))?;
    eprintln!("provision: done");
    Ok(0)
}
