//! The daemon's life, in three steps as busd has them: [`Daemon::start`] builds
//! the services, exports them and owns the bus name (readiness is announced only
//! then); [`Daemon::serve`] runs the service tasks until a signal or the loss of
//! the bus; [`Daemon::shutdown`] gives leases back and archives the logs when the
//! system is going down, and releases the name.

use std::{future::Future, sync::Arc};

use crate::{
    bus, config::live::ConfigService, health::HealthService, logs::LogService, metrics, network::NetworkService,
    paths::Paths, sd_notify, servers::ServersService,
};
use anyhow::{Context, Result, bail};
use gse_dbus::{BUS_NAME, BusAddress};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};
use zbus::{
    Connection,
    fdo::{RequestNameFlags, RequestNameReply},
};

pub(super) struct Daemon {
    bus: BusAddress,
    paths: Paths,
    conn: Connection,
    config: Arc<ConfigService>,
    health: Arc<HealthService>,
    servers: Arc<ServersService>,
    network: Arc<NetworkService>,
    logs: Arc<LogService>,
    watch: Option<crate::config::live::ConfigWatch>,
}

/// Why [`Daemon::serve`] returned.
pub(super) enum Ended {
    Signal,
    /// The bus connection ended: exit non-zero so the service manager restarts gsed.
    BusLost,
}

impl Daemon {
    pub async fn start(bus: BusAddress, paths: Paths, boot_id: &str) -> Result<Daemon> {
        // gsed owns the synced tree; making it now lets the watcher see it from the start.
        let synced = paths.synced_config();
        std::fs::create_dir_all(&synced).with_context(|| format!("cannot create {}", synced.display()))?;
        let config = ConfigService::new(&paths);
        let health =
            HealthService::new(&paths, boot_id, config.subscribe()).context("cannot start health recording")?;
        let servers = ServersService::new(&paths, config.clone(), boot_id);
        let network = NetworkService::new(&paths, config.clone());
        let logs = LogService::new(&paths, config.clone(), boot_id, &health.snapshot().booted_slot);

        // Watching starts before the name is claimed: a client that sees gsed on the
        // bus may rely on every later edit of config.d being noticed.
        let watch =
            config.watch().inspect_err(|e| warn!(error = %e, "cannot watch config.d; changes apply on Reload()")).ok();
        let conn = bus.connect().await.with_context(|| format!("cannot connect to {bus}"))?;
        let services = bus::Services {
            config: config.clone(),
            health: health.clone(),
            servers: servers.clone(),
            network: network.clone(),
        };
        bus::serve(&conn, &services).await.context("cannot export the D-Bus interfaces")?;
        match conn.request_name_with_flags(BUS_NAME, RequestNameFlags::DO_NOT_QUEUE).await {
            Ok(RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner) => {}
            Ok(_) | Err(zbus::Error::NameTaken) => {
                bail!("{BUS_NAME} is already owned on {bus}: another gsed is running")
            }
            Err(e) => return Err(e).with_context(|| format!("cannot own {BUS_NAME} on {bus}")),
        }
        info!(%bus, root = %paths.root().display(), %boot_id, "gsed ready");
        if let Err(e) = sd_notify::notify("READY=1") {
            warn!(error = %e, "could not notify systemd of readiness");
        }
        Ok(Daemon { bus, paths, conn, config, health, servers, network, logs, watch })
    }

    /// Runs every service until `stop` resolves or the bus connection ends.
    pub async fn serve(&mut self, stop: impl Future<Output = &'static str>) -> Ended {
        let tasks = self.spawn_tasks();
        // Without its bus gsed serves no one and no clean shutdown can be recorded.
        let bus_gone = {
            use futures_util::StreamExt;
            let stream = zbus::MessageStream::from(&self.conn);
            async move { stream.for_each(|_| async {}).await }
        };
        let ended = tokio::select! {
            why = stop => { info!(signal = why, "stopping"); Ended::Signal }
            () = bus_gone => {
                error!(bus = %self.bus, "lost the connection to the bus; exiting so the service manager restarts gsed");
                Ended::BusLost
            }
        };
        self.servers.update.stop();
        tasks.iter().for_each(JoinHandle::abort);
        ended
    }

    fn spawn_tasks(&mut self) -> Vec<JoinHandle<()>> {
        let watch = self.watch.take();
        let logs = self.logs.clone();
        let records = self.health.records();
        let health = self.health.clone();
        vec![
            tokio::spawn(async move {
                if let Err(e) = health.run().await {
                    error!(error = %e, "health recording stopped");
                }
            }),
            tokio::spawn(async move {
                if let Some(w) = watch {
                    w.run().await
                }
            }),
            tokio::spawn(self.servers.clone().run()),
            tokio::spawn(commit_when_green(self.health.clone(), self.servers.update.clone())),
            tokio::spawn(crate::servers::window::run(
                self.servers.update.clone(),
                self.config.clone(),
                self.paths.clone(),
            )),
            tokio::spawn(self.network.clone().run()),
            tokio::spawn(metrics::run(
                self.paths.clone(),
                metrics::Sources {
                    config: self.config.clone(),
                    health: self.health.clone(),
                    servers: self.servers.clone(),
                },
            )),
            // Packing what earlier boots left can take a moment: not before the name
            // is owned (a second gsed must not touch the spool), and off the bus's thread.
            tokio::spawn(async move {
                let starter = logs.clone();
                let _ = tokio::task::spawn_blocking(move || starter.start(&records)).await;
                logs.run().await
            }),
        ]
    }

    /// A system going down gives its DHCP leases back and archives its logs; a
    /// restart keeps both for the next gsed.
    pub async fn shutdown(self, ended: Ended) -> Result<()> {
        if self.health.shutdown_recorded() {
            self.network.release_all().await;
            match self.logs.archive_current(&self.health.records()) {
                Ok(Some(a)) => info!(
                    archive = %a.path.display(),
                    spooled_bytes = a.bytes,
                    archive_bytes = std::fs::metadata(&a.path).map(|m| m.len()).unwrap_or(0),
                    wall_ms = a.wall.as_secs_f64() * 1e3,
                    cpu_ms = a.cpu.as_secs_f64() * 1e3,
                    "this boot's logs archived"
                ),
                Ok(None) => {}
                Err(e) => {
                    error!(error = %e, "cannot archive this boot's logs; they stay in the spool for the next boot")
                }
            }
        }
        let _ = sd_notify::notify("STOPPING=1");
        if let Ended::BusLost = ended {
            bail!("lost the connection to {}", self.bus);
        }
        // Release the name explicitly so a successor can take it at once.
        let _ = self.conn.release_name(BUS_NAME).await;
        Ok(())
    }
}

/// A trial boot that turns green commits its version (DESIGN §11).
async fn commit_when_green(health: Arc<HealthService>, update: Arc<crate::servers::UpdateService>) {
    let mut rx = health.subscribe();
    loop {
        let (green, slot) = {
            let s = rx.borrow_and_update();
            (s.status == gse_dbus::health::Status::Green, s.booted_slot.clone())
        };
        if green {
            let _ = tokio::task::spawn_blocking(move || update.commit(&slot)).await;
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
