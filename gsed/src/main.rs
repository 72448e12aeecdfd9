//! gsed: the GSE daemon on every lab client.
//!
//! Order matters: signals are registered first, so a SIGTERM that arrives during
//! start-up still ends the daemon cleanly; readiness is announced only once the bus
//! name is owned; the main loop races the signals.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result, bail};
use clap::Parser;
use gse_dbus::{BUS_NAME, BusAddress};
use gsed::{
    bus, confd::ConfigService, health::HealthService, logs::LogService, metrics, network::NetworkService, paths::Paths,
    sd_notify, servers::ServersService,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};
use zbus::fdo::{RequestNameFlags, RequestNameReply};

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

fn main() -> ExitCode {
    let args = Args::parse();
    let paths = Paths::new(&args.root);
    // Early boot has no syslog and no spool yet: its console is kept by /init.
    gsed::logging::init((!args.early).then(|| paths.syslog_socket()).as_deref(), !args.early);
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
    let mut sigterm = signal(SignalKind::terminate()).context("cannot register SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot register SIGINT")?;

    if args.early {
        return early::run(&paths, async move {
            tokio::select! {
                _ = sigterm.recv() => "SIGTERM",
                _ = sigint.recv() => "SIGINT",
            }
        })
        .await;
    }
    let boot_id = match args.boot_id {
        Some(id) => id,
        None => kernel_boot_id()?,
    };
    // gsed owns the synced tree; making it now lets the watcher see it from the start.
    let synced = paths.synced_config();
    std::fs::create_dir_all(&synced).with_context(|| format!("cannot create {}", synced.display()))?;
    let config = ConfigService::new(&paths);
    let health = HealthService::new(&paths, &boot_id, config.subscribe()).context("cannot start health recording")?;
    let servers = ServersService::new(&paths, config.clone());
    let network = NetworkService::new(&paths, config.clone());
    let logs = LogService::new(&paths, config.clone(), &boot_id, &health.snapshot().booted_slot);
    let services = bus::Services {
        config: config.clone(),
        health: health.clone(),
        servers: servers.clone(),
        network: network.clone(),
    };

    // Watching starts before the name is claimed: a client that sees gsed on the
    // bus may rely on every later edit of config.d being noticed.
    let config_watch = match config.watch() {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, "cannot watch config.d; changes apply on Reload()");
            None
        }
    };
    let conn = args.bus.connect().await.with_context(|| format!("cannot connect to {}", args.bus))?;
    bus::serve(&conn, &services).await.context("cannot export the D-Bus interfaces")?;
    match conn.request_name_with_flags(BUS_NAME, RequestNameFlags::DO_NOT_QUEUE).await {
        Ok(RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner) => {}
        Ok(_) | Err(zbus::Error::NameTaken) => {
            bail!("{BUS_NAME} is already owned on {}: another gsed is running", args.bus)
        }
        Err(e) => return Err(e).with_context(|| format!("cannot own {BUS_NAME} on {}", args.bus)),
    }
    info!(bus = %args.bus, root = %paths.root().display(), %boot_id, "gsed ready");
    if let Err(e) = sd_notify::notify("READY=1") {
        warn!(error = %e, "could not notify systemd of readiness");
    }

    let health_task = tokio::spawn(health.clone().run());
    let watch_task = tokio::spawn(async move {
        if let Some(w) = config_watch {
            w.run().await
        }
    });
    let servers_task = tokio::spawn(servers.clone().run());
    let network_task = tokio::spawn(network.clone().run());
    let metrics_task = tokio::spawn(metrics::run(
        paths.clone(),
        metrics::Sources { config: config.clone(), health: health.clone(), servers: servers.clone() },
    ));
    // Packing what earlier boots left can take a moment: not before the name is
    // owned (a second gsed must not touch the spool), and off the bus's thread.
    let logs_task = tokio::spawn({
        let (logs, records) = (logs.clone(), health.records());
        async move {
            let starter = logs.clone();
            let _ = tokio::task::spawn_blocking(move || starter.start(&records)).await;
            logs.run().await
        }
    });
    // Without its bus gsed serves no one and no clean shutdown can be recorded:
    // when the connection ends (dbus-daemon restarted, or it dropped gsed), exit
    // non-zero so supervise-daemon or systemd starts a gsed that connects again.
    let bus_gone = {
        use futures_util::StreamExt;
        let stream = zbus::MessageStream::from(&conn);
        async move { stream.for_each(|_| async {}).await }
    };
    let bus_lost = tokio::select! {
        _ = sigterm.recv() => { info!(signal = "SIGTERM", "stopping"); false }
        _ = sigint.recv() => { info!(signal = "SIGINT", "stopping"); false }
        () = bus_gone => { error!(bus = %args.bus, "lost the connection to the bus; exiting so the service manager restarts gsed"); true }
    };
    health_task.abort();
    watch_task.abort();
    servers_task.abort();
    network_task.abort();
    metrics_task.abort();
    logs_task.abort();
    // A system going down gives its DHCP leases back and archives its logs; a
    // restart keeps both for the next gsed.
    if health.shutdown_recorded() {
        network.release_all().await;
        match logs.archive_current(&health.records()) {
            Ok(Some(a)) => info!(
                archive = %a.path.display(),
                spooled_bytes = a.bytes,
                archive_bytes = std::fs::metadata(&a.path).map(|m| m.len()).unwrap_or(0),
                wall_ms = a.wall.as_secs_f64() * 1e3,
                cpu_ms = a.cpu.as_secs_f64() * 1e3,
                "this boot's logs archived"
            ),
            Ok(None) => {}
            Err(e) => error!(error = %e, "cannot archive this boot's logs; they stay in the spool for the next boot"),
        }
    }
    let _ = sd_notify::notify("STOPPING=1");
    if bus_lost {
        bail!("lost the connection to {}", args.bus);
    }
    // Release the name explicitly so a successor can take it at once.
    let _ = conn.release_name(BUS_NAME).await;
    Ok(())
}

mod early {
    //! `gsed --early`: no bus daemon in the initramfs, so the Boot interface is
    //! served peer-to-peer to each client that connects to the early socket.

    use std::{
        os::unix::fs::{MetadataExt, PermissionsExt},
        sync::Arc,
    };

    use anyhow::{Context, Result};
    use gse_dbus::OBJECT_PATH;
    use gsed::{boot::BootService, bus::BootObject, confd::ConfigService, config, paths::Paths};
    use tokio::{net::UnixListener, sync::Notify};
    use tracing::{info, warn};
    use zbus::{Guid, connection};

    /// How long a client of the early socket may take for the D-Bus handshake.
    const HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(5);

    pub async fn run(paths: &Paths, signal: impl std::future::Future<Output = &'static str>) -> Result<()> {
        let config = ConfigService::with_trees(config::early_layers(paths));
        let boot = BootService::new(paths, config);
        let finished = Arc::new(Notify::new());

        let sock = paths.early_socket();
        if let Some(dir) = sock.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).with_context(|| format!("cannot listen on {}", sock.display()))?;
        // Only root drives early boot.
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
        let ours = std::fs::metadata(&sock).map(|m| (m.dev(), m.ino())).ok();
        info!(socket = %sock.display(), "gsed --early ready");

        let mut conns = Vec::new();
        let (ready_tx, mut ready) = tokio::sync::mpsc::unbounded_channel();
        tokio::pin!(signal);
        let why = loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, _) = accepted.context("accepting a connection")?;
                    // Only root drives early boot, whatever the socket's mode says.
                    match stream.peer_cred().map(|c| c.uid()) {
                        Ok(0) => {}
                        Ok(uid) => { warn!(uid, "refused a connection to the early socket: only root may drive early boot"); continue; }
                        Err(e) => { warn!(error = %e, "refused a connection whose peer is unknown"); continue; }
                    }
                    // Each handshake runs on its own, bounded: a client that stays
                    // silent cannot hold up the hook's.
                    let (obj, tx) = (BootObject::new(boot.clone(), finished.clone()), ready_tx.clone());
                    let stream = stream.into_std()?;
                    tokio::spawn(async move {
                        let built = connection::Builder::unix_stream(stream)
                            .server(Guid::generate())
                            .p2p()
                            .serve_at(OBJECT_PATH, obj)
                            .build();
                        match tokio::time::timeout(HANDSHAKE, built).await {
                            Ok(Ok(c)) => { let _ = tx.send(c); }
                            Ok(Err(e)) => warn!(error = %e, "a client could not connect"),
                            Err(_) => warn!("a client did not finish its handshake within {HANDSHAKE:?}; dropped"),
                        }
                    });
                }
                Some(c) = ready.recv() => conns.push(c),
                _ = finished.notified() => break "the boot was handed over",
                s = &mut signal => break s,
            }
        };
        info!(why, "gsed --early stopping");
        // Let the reply to Finish() go out before the connections close.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drop(conns);
        // A successor may already listen on the same path; leave its socket alone.
        if std::fs::metadata(&sock).map(|m| (m.dev(), m.ino())).ok() == ours {
            let _ = std::fs::remove_file(&sock);
        }
        Ok(())
    }
}

fn kernel_boot_id() -> Result<String> {
    let path = "/proc/sys/kernel/random/boot_id";
    let id = std::fs::read_to_string(path).with_context(|| format!("cannot read {path} (pass --boot-id)"))?;
    Ok(id.trim().to_owned())
}
