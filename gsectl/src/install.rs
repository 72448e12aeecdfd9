//! `gsectl install`: puts a GSE image (stage4 from `gsectl image build`) into
//! the slots of a provisioned machine, each with a fresh boot flag — how a client
//! is installed from a USB stick or over the network, and how tests install theirs.

use std::{path::PathBuf, process::Command, time::Duration};

use clap::Args;
use gsed::{
    boot::{
        copy::clear_dir,
        flag::{self, BootFlag, FlagKey},
        provision::image_version,
        slots::Slots,
        state::BootState,
    },
    paths::Paths,
};

use crate::Failure;

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// The image (.tar.zst) to install.
    #[arg(long)]
    image: PathBuf,
    /// Slots to install into (default: every slot in boot.conf).
    #[arg(long = "slot")]
    slots: Vec<String>,
    /// config.d to take the slots from (default: the layers under --root).
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn install(root: &std::path::Path, args: InstallArgs) -> Result<u8, Failure> {
    let paths = Paths::new(root);
    let loaded = crate::offline_config(&paths, args.config.as_deref())?;
    let settings = &loaded.settings;
    if !args.image.is_file() {
        return Err(Failure::Error(format!("{} is not a file", args.image.display())));
    }
    let key_path = paths.flag_key();
    let key = FlagKey::load(&key_path).map_err(|e| {
        Failure::Error(format!("no machine key at {} ({e}); run `gsectl provision` first", key_path.display()))
    })?;
    let targets: Vec<String> =
        if args.slots.is_empty() { settings.boot.slots.keys().cloned().collect() } else { args.slots.clone() };
    for t in &targets {
        if !settings.boot.slots.contains_key(t) {
            return Err(Failure::Error(format!("boot.conf defines no slot '{t}'")));
        }
    }
    let slots = Slots { paths: &paths, settings, device_wait: Duration::from_secs(10) };
    for slot in &targets {
        eprintln!("install: slot {slot}: unpacking {}", args.image.display());
        let version = slots
            .with_mounted(slot, true, |dir| {
                let io = |what: &str| {
                    let what = format!("slot {slot}: {what}");
                    move |e: std::io::Error| gsed::boot::BootError::Io(what, e)
                };
                // The flag goes first: an interrupted install is never trusted.
                match std::fs::remove_file(flag::flag_path(dir)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("removing the old flag")(e)),
                    _ => nix::unistd::sync(),
                }
                clear_dir(dir, &["lost+found"]).map_err(io("emptying the slot"))?;
                let out = Command::new("tar")
                    .args(["--zstd", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
                    .arg(&args.image)
                    .arg("-C")
                    .arg(dir)
                    .output()
                    .map_err(io("running GNU tar"))?;
                if !out.status.success() {
                    return Err(gsed::boot::BootError::Tool(format!(
                        "slot {slot}: tar: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
                let version = image_version(dir);
                BootFlag { slot: slot.clone(), image_version: version.clone(), healthy_cycles: 0, last_good: 0 }
                    .write(dir, &key)
                    .map_err(io("writing the flag"))?;
                Ok(version)
            })
            .map_err(|e| Failure::Error(format!("install failed: {e}")))?;
        eprintln!("install: slot {slot}: image {version} installed, fresh flag written");
    }
    // The installed slots start over: no attempts, no unfinished repair of them.
    let state_path = paths.boot_state();
    let mut state = BootState::load(&state_path);
    for t in &targets {
        state.attempts.remove(t);
    }
    if state.repair.as_ref().is_some_and(|m| targets.contains(&m.target)) {
        state.repair = None;
    }
    state.save(&state_path).map_err(|e| Failure::Error(format!("saving {}: {e}", state_path.display())))?;
    Ok(0)
}
