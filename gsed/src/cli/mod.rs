//! The `gsed` command: parses the arguments and dispatches to the daemon's life
//! (`daemon.rs`) or early boot's (`early.rs`). It lives in the library so that
//! one binary can be both commands in the initramfs (`gsectl` runs this when it
//! is called as `gsed`).

use std::{path::PathBuf, process::ExitCode};

mod daemon;
mod early;

use crate::paths::{self, Paths};
use anyhow::{Context, Result};
use clap::Parser;
use daemon::Daemon;
use gse_dbus::BusAddress;
use tokio::signal::unix::{SignalKind, signal};
use tracing::error;

/// The GSE daemon: records boot health and serves org.gentoo.Gse1 on D-Bus.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Bus to serve on: system, session, or a D-Bus address (unix:path=...).
    #[arg(long, default_value = "system")]
    bus: BusAddress,
    /// Prefix for every path GSE uses (tests, demos); devices are never prefixed.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Use this boot id instead of the kernel's (to simulate successive boots).
    #[arg(long)]
    boot_id: Option<String>,
    /// Early-boot mode (initramfs): serve org.gentoo.Gse1.Boot peer-to-peer on
    /// /run/gse/early.sock until the hook calls Finish().
    #[arg(long, conflicts_with_all = ["bus", "boot_id"])]
    early: bool,
}

/// `gsed`'s `main`.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let paths = Paths::new(&args.root);
    // Early boot has no syslog and no spool yet: its console is kept by /init.
    crate::logging::init((!args.early).then(|| paths.syslog_socket()).as_deref(), !args.early);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gsed: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args, paths)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("gsed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, paths: Paths) -> Result<()> {
    // Signals first: a SIGTERM during start-up still ends gsed cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot register SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot register SIGINT")?;
    let stop = async move {
        tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        }
    };
    if args.early {
        // The kernel's id only seeds the server choice here; any value will do.
        let boot_id = paths::kernel_boot_id().unwrap_or_default();
        return early::run(&paths, &boot_id, stop).await;
    }
    let boot_id = match args.boot_id {
        Some(id) => id,
        None => paths::kernel_boot_id().context("pass --boot-id")?,
    };
    let mut daemon = Daemon::start(args.bus, paths, &boot_id).await?;
    let ended = daemon.serve(stop).await;
    daemon.shutdown(ended).await
}
