//! `gsectl keygen` and `gsectl publish`: the server side. They write a static
//! tree that nginx (or a mirror) serves; no daemon is involved.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use gsed::{fsutil::write_atomic, servers::manifest, servers::publish};

use crate::Failure;

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the secret key (mode 0600); keep it on the publishing server only.
    #[arg(long)]
    secret: PathBuf,
    /// Where to write the public key (a minisign .pub file).
    #[arg(long)]
    public: PathBuf,
    /// Replace existing key files.
    #[arg(long)]
    force: bool,
}

pub fn keygen(args: KeygenArgs) -> Result<u8, Failure> {
    for p in [&args.secret, &args.public] {
        if p.exists() && !args.force {
            return Err(Failure::Error(format!("{} exists; pass --force to replace it", p.display())));
        }
    }
    let (public, secret, line) = manifest::keygen().map_err(|e| Failure::Error(e.to_string()))?;
    let write = |p: &Path, data: &str, mode| {
        write_atomic(p, data.as_bytes(), mode).map_err(|e| Failure::Error(format!("cannot write {}: {e}", p.display())))
    };
    write(&args.secret, &secret, 0o600)?;
    write(&args.public, &public, 0o644)?;
    eprintln!("keygen: secret key {}, public key {}", args.secret.display(), args.public.display());
    eprintln!("keygen: put this line in controller/server/server.info.conf:");
    println!("public_key = \"{line}\"");
    Ok(0)
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    #[command(subcommand)]
    what: Publish,
}

#[derive(Subcommand, Debug)]
enum Publish {
    /// Validate a config.d tree and publish it, signed, under TREE/gse1/config.d.
    Config {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        to: PathBuf,
        #[arg(long)]
        secret: PathBuf,
    },
    /// Cut an image (.tar.zst or .tar) into chunks under TREE/gse1/chunks/, sign
    /// its index under TREE/gse1/images/VERSION/ and point a channel at it.
    Image {
        #[arg(long)]
        image: PathBuf,
        #[arg(long)]
        version: String,
        #[arg(long)]
        channel: String,
        #[arg(long)]
        to: PathBuf,
        #[arg(long)]
        secret: PathBuf,
        /// Percent of the machines (by a stable per-machine bucket) that take it.
        #[arg(long, default_value_t = 100)]
        rollout: u8,
        /// Take an image that carries no kernel of its own: its machines boot
        /// whatever kernel their own boot loader starts (no per-slot kernels).
        #[arg(long)]
        no_kernel: bool,
    },
    /// Change the share of machines that take a channel's current version.
    Rollout {
        #[arg(long)]
        channel: String,
        #[arg(long)]
        percent: u8,
        #[arg(long)]
        to: PathBuf,
        #[arg(long)]
        secret: PathBuf,
    },
    /// Remove all but the newest N versions (and any a channel points at), and
    /// every chunk no remaining version uses.
    Prune {
        #[arg(long)]
        keep: usize,
        #[arg(long)]
        to: PathBuf,
    },
}

pub fn publish(args: PublishArgs) -> Result<u8, Failure> {
    match args.what {
        Publish::Config { from, to, secret } => {
            let (id, m) = publish::publish_config(&from, &to, &secret)
                .map_err(|e| Failure::Error(format!("publish config: {e}")))?;
            eprintln!(
                "publish: {} files of {} as {id} under {}",
                m.entries.len(),
                from.display(),
                to.join("gse1/config.d").display()
            );
        }
        Publish::Image { image, version, channel, to, secret, rollout, no_kernel } => {
            let ch = publish::publish_image(&image, &version, &channel, &to, &secret, rollout, no_kernel)
                .map_err(|e| Failure::Error(format!("publish image: {e}")))?;
            eprintln!(
                "publish: channel {} now offers {} ({} MB unpacked, {} MB to fetch in full) to {}% of the machines",
                ch.channel,
                ch.version,
                ch.size >> 20,
                ch.packed >> 20,
                ch.rollout
            );
        }
        Publish::Rollout { channel, percent, to, secret } => {
            let ch = publish::publish_rollout(&to, &channel, percent, &secret)
                .map_err(|e| Failure::Error(format!("publish rollout: {e}")))?;
            eprintln!("publish: channel {} offers {} to {}% of the machines", ch.channel, ch.version, ch.rollout);
        }
        Publish::Prune { keep, to } => {
            let (removed, freed) =
                publish::prune_images(&to, keep).map_err(|e| Failure::Error(format!("publish prune: {e}")))?;
            eprintln!("publish: removed {} version(s) {removed:?}, {} MB of chunks", removed.len(), freed >> 20);
        }
    }
    Ok(0)
}
