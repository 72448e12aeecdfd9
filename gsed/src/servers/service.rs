//! The running side of servers (DESIGN §8): probe every configured server, keep
//! or change the current one through the [`Selector`], sync config.d from it, and
//! check the update channel. Follows config changes without a restart; with no
//! server configured it waits for config changes and makes no traffic at all.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use gse_dbus::servers::{Server, ServerState};
use serde::Serialize;
use tokio::sync::{Notify, broadcast, watch};
use tracing::{info, warn};

use super::{
    http::{Http, probe_all},
    select::{Policy, Selector, Switch, View},
    sync::sync_config,
    update::UpdateService,
};
use crate::{config::ServerInfoConf, config::live::ConfigService, journal::now, paths::Paths};

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SyncStatus {
    pub time: u64,
    pub server: String,
    /// `ok`, `unchanged` or the error.
    pub result: String,
    pub changed: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServersSnapshot {
    pub current: String,
    pub pinned: bool,
    pub servers: Vec<Server>,
    pub last_sync: SyncStatus,
}

#[derive(Debug, thiserror::Error)]
pub enum ServersError {
    #[error("no server named '{0}' in server.info.conf")]
    Unknown(String),
    #[error("no server is configured")]
    NoServer,
    #[error("sync failed: {0}")]
    Sync(String),
}

pub struct ServersService {
    paths: Paths,
    config: Arc<ConfigService>,
    pub update: Arc<UpdateService>,
    state: watch::Sender<ServersSnapshot>,
    switches: broadcast::Sender<Switch>,
    selector: Mutex<Selector>,
    wake: Notify,
    sync_lock: tokio::sync::Mutex<()>,
    started: Instant,
}

fn policy(c: &ServerInfoConf) -> Policy {
    Policy { fail_after: c.fail_after, margin: c.switch_margin, jitter_ms: c.jitter.get().as_millis() as u64 }
}

impl ServersService {
    /// `boot_id` seeds this client's jitter, so machines of a room draw apart.
    pub fn new(paths: &Paths, config: Arc<ConfigService>, boot_id: &str) -> Arc<Self> {
        let seed = boot_id.bytes().fold(0u64, |h, x| h.rotate_left(5) ^ u64::from(x)) ^ u64::from(std::process::id());
        Arc::new(ServersService {
            paths: paths.clone(),
            update: UpdateService::new(paths, config.clone()),
            config,
            state: watch::Sender::new(ServersSnapshot::default()),
            switches: broadcast::channel(16).0,
            selector: Mutex::new(Selector::new(seed)),
            wake: Notify::new(),
            sync_lock: tokio::sync::Mutex::new(()),
            started: Instant::now(),
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<ServersSnapshot> {
        self.state.subscribe()
    }

    pub fn switches(&self) -> broadcast::Receiver<Switch> {
        self.switches.subscribe()
    }

    pub fn snapshot(&self) -> ServersSnapshot {
        self.state.borrow().clone()
    }

    fn selector(&self) -> std::sync::MutexGuard<'_, Selector> {
        self.selector.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn conf(&self) -> ServerInfoConf {
        self.config.current().loaded.settings.servers.clone()
    }

    fn url_of(&self, name: &str) -> Option<String> {
        self.conf().server.iter().find(|s| s.name == name).map(|s| s.url.0.clone())
    }

    /// Every server's URL, the current one first, then in the order of the list:
    /// where an image download starts, and where it fails over to.
    pub fn urls_current_first(&self) -> Vec<String> {
        let current = self.snapshot().current;
        let mut urls: Vec<(bool, String)> =
            self.conf().server.iter().map(|s| (s.name != current, s.url.0.clone())).collect();
        urls.sort_by_key(|(other, _)| *other);
        urls.into_iter().map(|(_, u)| u).collect()
    }

    /// Pins `name` until [`Self::unpin`] or a restart, and syncs from it.
    pub fn switch_to(&self, name: &str) -> Result<(), ServersError> {
        if self.url_of(name).is_none() {
            return Err(ServersError::Unknown(name.to_owned()));
        }
        let sw = self.selector().pin(name);
        self.apply_switch(sw);
        self.wake.notify_one();
        Ok(())
    }

    pub fn unpin(&self) {
        self.selector().unpin();
        self.state.send_modify(|s| s.pinned = false);
        self.wake.notify_one();
    }

    fn apply_switch(&self, sw: Switch) {
        info!(from = ?sw.from, to = %sw.to, reason = %sw.reason, "server switch");
        let pinned = self.selector().pinned;
        self.state.send_modify(|s| {
            s.current = sw.to.clone();
            s.pinned = pinned;
        });
        let _ = self.switches.send(sw);
    }

    /// Syncs config.d from the current server now.
    pub async fn sync_now(&self) -> Result<SyncStatus, ServersError> {
        self.sync_until(None).await
    }

    /// Early boot's one step online (DESIGN §6): probe every server once, take
    /// the best that answered (no second chances: `fail_after` is 1 here) and
    /// sync config.d from it, all by `until`. The daemon's loop does the same
    /// steps, with its own pace and smoothing.
    pub async fn pick_and_sync(&self, until: Instant) -> Result<SyncStatus, ServersError> {
        let conf = self.conf();
        let mut stats = BTreeMap::new();
        self.probe_round(&conf, &mut stats, Some(until)).await;
        let once = Policy { fail_after: 1, jitter_ms: 0, ..policy(&conf) };
        if let Some(sw) = self.select(&conf, &stats, &once) {
            self.apply_switch(sw);
        }
        self.sync_until(Some(until)).await
    }

    /// Syncs from the current server, stopping at `until`; a tree that changed is
    /// reloaded before this returns.
    async fn sync_until(&self, until: Option<Instant>) -> Result<SyncStatus, ServersError> {
        let _one_at_a_time = self.sync_lock.lock().await;
        let current = self.snapshot().current;
        if current.is_empty() {
            return Err(ServersError::NoServer);
        }
        let url = self.url_of(&current).ok_or(ServersError::NoServer)?;
        let conf = self.conf();
        let mut http = Http::new(conf.probe_timeout.get().max(Duration::from_secs(10)));
        if let Some(t) = until {
            http = http.until(t);
        }
        let paths = self.paths.clone();
        let key = conf.public_key.clone();
        let result = tokio::task::spawn_blocking(move || sync_config(&http, &url, &key, &paths))
            .await
            .map_err(|e| ServersError::Sync(e.to_string()))?;
        let status = match &result {
            Ok(s) if s.changed.is_empty() => {
                SyncStatus { time: now(), server: current.clone(), result: "unchanged".into(), changed: vec![] }
            }
            Ok(s) => {
                info!(server = %current, changed = %crate::logging::brief(&s.changed), "config.d synced");
                SyncStatus { time: now(), server: current.clone(), result: "ok".into(), changed: s.changed.clone() }
            }
            Err(e) => {
                warn!(server = %current, error = %e, "config.d sync failed; nothing was changed");
                SyncStatus { time: now(), server: current.clone(), result: e.to_string(), changed: vec![] }
            }
        };
        self.state.send_modify(|s| s.last_sync = status.clone());
        // The new files apply before the caller goes on (early boot mounts /etc
        // next); the watcher then finds nothing new and does not reload again.
        if matches!(&result, Ok(s) if !s.changed.is_empty()) {
            self.config.reload();
        }
        result.map(|_| status).map_err(|e| ServersError::Sync(e.to_string()))
    }

    /// Probes every server once, concurrently.
    async fn probe_round(&self, conf: &ServerInfoConf, stats: &mut BTreeMap<String, Server>, until: Option<Instant>) {
        let mut http = Http::new(conf.probe_timeout.get());
        if let Some(t) = until {
            http = http.until(t);
        }
        let results = probe_all(&http, &conf.server).await;
        stats.retain(|n, _| conf.server.iter().any(|s| s.name == *n));
        for (s, result) in conf.server.iter().zip(results) {
            let st =
                stats.entry(s.name.clone()).or_insert_with(|| Server { name: s.name.clone(), ..Default::default() });
            st.url = s.url.0.clone();
            match result {
                Ok(p) => {
                    // Smoothed, but a server that was failing starts afresh.
                    let fresh = st.failures > 0 || st.latency_ms == 0.0;
                    st.latency_ms = if fresh { p.latency_ms } else { 0.5 * st.latency_ms + 0.5 * p.latency_ms };
                    st.load = p.load;
                    st.failures = 0;
                    st.state = ServerState::Up;
                }
                Err(e) => {
                    st.failures += 1;
                    if st.failures >= conf.fail_after && st.state != ServerState::Down {
                        warn!(server = %s.name, why = %e.why, "server down");
                        st.state = ServerState::Down;
                    }
                }
            }
        }
    }

    fn select(&self, conf: &ServerInfoConf, stats: &BTreeMap<String, Server>, policy: &Policy) -> Option<Switch> {
        let views: Vec<View> = conf
            .server
            .iter()
            .filter_map(|s| stats.get(&s.name))
            .map(|st| View { name: st.name.clone(), latency_ms: st.latency_ms, load: st.load, failures: st.failures })
            .collect();
        let now_ms = self.started.elapsed().as_millis() as u64;
        let sw = self.selector().update(&views, policy, now_ms);
        let ordered: Vec<Server> = conf.server.iter().filter_map(|s| stats.get(&s.name).cloned()).collect();
        self.state.send_if_modified(|s| {
            let changed = s.servers != ordered;
            s.servers = ordered;
            changed
        });
        sw
    }

    /// Runs until the daemon stops.
    pub async fn run(self: Arc<Self>) {
        let mut cfg = self.config.subscribe();
        let mut stats: BTreeMap<String, Server> = BTreeMap::new();
        let mut next_sync: Option<Instant> = None;
        let mut next_check: Option<Instant> = None;
        loop {
            let conf = self.conf();
            if conf.server.is_empty() {
                if !self.snapshot().current.is_empty() {
                    *self.selector() = Selector::new(fastrand::u64(..));
                    self.state
                        .send_modify(|s| *s = ServersSnapshot { last_sync: s.last_sync.clone(), ..Default::default() });
                }
                // No server: no traffic, no timers; wait for the configuration.
                if cfg.changed().await.is_err() {
                    return;
                }
                continue;
            }
            self.probe_round(&conf, &mut stats, None).await;
            if let Some(sw) = self.select(&conf, &stats, &policy(&conf)) {
                self.apply_switch(sw);
                next_sync = Some(Instant::now());
            }
            let now = Instant::now();
            if next_sync.is_none_or(|t| t <= now) {
                let _ = self.sync_now().await;
                next_sync = Some(Instant::now() + conf.sync_interval.get());
            }
            if next_check.is_none_or(|t| t <= now) {
                if !self.snapshot().current.is_empty() {
                    self.update.check(self.urls_current_first()).await;
                }
                next_check = Some(Instant::now() + self.config.current().loaded.settings.update.check_interval.get());
            }
            let wake_at = [Some(now + conf.probe_interval.get()), next_sync, next_check]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now);
            tokio::select! {
                _ = tokio::time::sleep_until(wake_at.into()) => {}
                _ = self.wake.notified() => {}
                changed = cfg.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // A changed list applies now: a removed current server is left at once.
                    let conf = self.conf();
                    if let Some(sw) = self.select(&conf, &stats, &policy(&conf)) {
                        self.apply_switch(sw);
                        next_sync = Some(Instant::now());
                    }
                }
            }
        }
    }
}
