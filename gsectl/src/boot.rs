//! `gsectl boot prepare` (the initramfs hook's driver) and `gsectl provision`.

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
    Prepare {
        #[arg(long)]
        sysroot: PathBuf,
    },
}

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
    let addr =
        bus.cloned().unwrap_or_else(|| BusAddress::Address(format!("unix:path={}", paths.early_socket().display())));
    let conn = addr.connect_peer().await.map_err(|e| {
        Failure::Unreachable(format!("gsed --early is not answering on {addr} ({e}); the initramfs hook starts it"))
    })?;
    let proxy = BootProxy::builder(&conn)
        .build()
        .await
        .map_err(|e| Failure::from_bus(e.into(), &addr, "reach gsed --early"))?;
    let BootAction::Prepare { sysroot } = args.action;
    let result = proxy.prepare(&sysroot.to_string_lossy()).await;
    let _ = proxy.finish().await;
    let json = result.map_err(|e| Failure::from_bus(e, &addr, "prepare the boot"))?;
    let r: BootRecord = serde_json::from_str(&json)
        .map_err(|e| Failure::Error(format!("gsed --early sent a record this gsectl cannot read: {e}")))?;
    eprintln!("gse: booting slot {} ({}): {}", r.slot, r.action, r.reason);
    println!("{json}");
    Ok(0)
}

pub fn provision(root: &std::path::Path, args: ProvisionArgs) -> Result<u8, Failure> {
    let paths = Paths::new(root);
    let loaded = crate::offline_config(&paths, args.config.as_deref())?;
    let opts = provision::Options { format: args.format, force: args.force };
    provision::provision(&paths, &loaded.settings, &opts, &mut |line| eprintln!("provision: {line}"))
        .map_err(|e| Failure::Error(format!("provisioning failed: {e}")))?;
    eprintln!("provision: done");
    Ok(0)
}
