//! `gsectl install`: puts a GSE image (stage4 from `gsectl image build`) into
//! the slots of a provisioned machine, each with a fresh boot flag — how a client
//! is installed from a USB stick or over the network, and how tests install theirs.
//! The image passes through the chunk cache, the way an update installs one.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use gsed::{
    boot::{flag::FlagKey, slots::Slots, state::BootState},
    image::{
        Cache,
        index::{LOCAL_LEVEL, open_image, write_chunks},
        install,
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
    // The image goes into the chunk cache first, as an update's download
    // would leave it: the next update fetches only what changed.
    let cache = Cache::new(paths.chunk_cache());
    eprintln!("install: reading {}", args.image.display());
    let stream =
        open_image(&args.image).map_err(|e| Failure::Error(format!("cannot read {}: {e}", args.image.display())))?;
    let index = write_chunks(stream, cache.dir(), "local", LOCAL_LEVEL)
        .map_err(|e| Failure::Error(format!("{}: {e}", args.image.display())))?;
    install::scan(&cache, &index).map_err(|e| Failure::Error(format!("{}: {e}", args.image.display())))?;
    let slots = Slots { paths: &paths, settings, device_wait: Duration::from_secs(10) };
    for slot in &targets {
        eprintln!("install: slot {slot}: unpacking {}", args.image.display());
        let version = slots
            .with_mounted(slot, true, |dir| {
                install::install(dir, slot, &index, &|c| cache.read(c), &key, &|_, _| {})
                    .map_err(|e| gsed::boot::BootError::Tool(e.to_string()))
            })
            .map_err(|e| Failure::Error(format!("install failed: {e}")))?;
        let record = gsed::image::Index { version: version.clone(), ..index.clone() };
        gsed::image::record_slot(&paths, slot, &record).map_err(|e| Failure::Error(e.to_string()))?;
        eprintln!("install: slot {slot}: image {version} installed, fresh flag written");
    }
    // The installed slots start over: no attempts, no unfinished repair of them.
    let state_path = paths.boot_state();
    let mut state = BootState::load(&state_path);
    for t in &targets {
        state.attempts.remove(t);
    }
    // A machine installed whole starts from boot.conf's primary, with no update
    // pending, and is a system to boot (provision marked it unfinished).
    let whole = settings.boot.slots.keys().all(|s| targets.contains(s));
    if whole {
        (state.primary, state.trial, state.failed) = (None, None, None);
    }
    if state.repair.as_ref().is_some_and(|m| targets.contains(&m.target)) {
        state.repair = None;
    }
    state.save(&state_path).map_err(|e| Failure::Error(format!("saving {}: {e}", state_path.display())))?;
    let marker = paths.install_unfinished();
    if whole
        && let Err(e) = std::fs::remove_file(&marker)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(Failure::Error(format!("removing {}: {e}", marker.display())));
    }
    Ok(0)
}
