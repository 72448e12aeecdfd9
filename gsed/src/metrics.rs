//! Prometheus metrics for node_exporter's textfile collector (DESIGN §13).
//!
//! [`render`] turns the state of the services into the exposition text (pure, so
//! the fixed names are tested without a daemon); [`run`] rewrites the file
//! atomically whenever that state changes — never on a timer — so a room is
//! scraped by the Prometheus the university already runs.

use std::{path::PathBuf, sync::Arc};

use gse_dbus::{boot::Action, boot::BootRecord, health::Status, servers::UpdateState};
use tracing::{debug, warn};

use crate::{
    config::live::ConfigService,
    fsutil::write_atomic,
    health::HealthService,
    paths::Paths,
    servers::{ServersService, service::ServersSnapshot, update::UpdateSnapshot},
};

/// Everything the metrics say, gathered from the services.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    pub status: Status,
    pub healthy_cycles: u64,
    pub slot: String,
    pub action: Action,
    pub image_version: String,
    pub update_state: UpdateState,
    pub server: String,
    pub config_errors: usize,
    /// Seconds since the epoch of the last sync that succeeded (0: none yet).
    pub last_sync: u64,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The exposition text.
pub fn render(i: &Inputs) -> String {
    let mut out = String::new();
    let mut family = |name: &str, help: &str, samples: Vec<(String, String)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, value) in samples {
            out.push_str(&format!("{name}{labels} {value}\n"));
        }
    };
    fn one_of<T: Copy + PartialEq + std::fmt::Display>(label: &str, all: &[T], current: T) -> Vec<(String, String)> {
        all.iter().map(|n| (format!("{{{label}=\"{n}\"}}"), u8::from(*n == current).to_string())).collect()
    }
    family(
        "gse_health_status",
        "Health of this boot: 1 for the current status (unknown, starting, green, red).",
        one_of("status", Status::ALL, i.status),
    );
    family(
        "gse_healthy_cycles",
        "Completed healthy cycles of the booted slot.",
        vec![(String::new(), i.healthy_cycles.to_string())],
    );
    family(
        "gse_boot_info",
        "What early boot decided for this boot (always 1).",
        vec![(
            format!(
                "{{slot=\"{}\",action=\"{}\",image_version=\"{}\"}}",
                escape(&i.slot),
                i.action,
                escape(&i.image_version)
            ),
            "1".into(),
        )],
    );
    family(
        "gse_update_state",
        "State of the image update: 1 for the current one.",
        one_of("state", UpdateState::ALL, i.update_state),
    );
    let server = if i.server.is_empty() {
        Vec::new()
    } else {
        vec![(format!("{{name=\"{}\"}}", escape(&i.server)), "1".into())]
    };
    family("gse_server_current", "The server this client syncs from (1; absent when none).", server);
    family(
        "gse_config_errors",
        "Errors in the current config.d files (the last good configuration stays in force).",
        vec![(String::new(), i.config_errors.to_string())],
    );
    family(
        "gse_last_sync_timestamp_seconds",
        "When config.d was last synced from a server (0: not in this run of gsed).",
        vec![(String::new(), i.last_sync.to_string())],
    );
    out
}

/// The services whose state the metrics show.
pub struct Sources {
    pub config: Arc<ConfigService>,
    pub health: Arc<HealthService>,
    pub servers: Arc<ServersService>,
}

fn gather(s: &Sources, boot: &BootRecord, last_sync: u64) -> Inputs {
    let h = s.health.snapshot();
    let srv: ServersSnapshot = s.servers.snapshot();
    let upd: UpdateSnapshot = s.servers.update.snapshot();
    Inputs {
        status: h.status,
        healthy_cycles: h.healthy_cycles,
        slot: h.booted_slot,
        action: boot.action,
        image_version: Some(boot.image_version.clone()).filter(|v| !v.is_empty()).unwrap_or(upd.local_version),
        update_state: upd.state,
        server: srv.current,
        config_errors: s.config.current().errors.len(),
        last_sync,
    }
}

/// Rewrites the metrics file on every change until aborted.
pub async fn run(paths: Paths, s: Sources) {
    let boot = crate::health::read_boot_record(&paths.boot_json()).unwrap_or_default();
    let (mut health, mut servers, mut update, mut config) =
        (s.health.subscribe(), s.servers.subscribe(), s.servers.update.subscribe(), s.config.subscribe());
    let mut last_sync = 0;
    let mut written: Option<(PathBuf, String)> = None;
    loop {
        let sync = servers.borrow_and_update().last_sync.clone();
        if matches!(sync.result.as_str(), "ok" | "unchanged") {
            last_sync = last_sync.max(sync.time);
        }
        health.borrow_and_update();
        update.borrow_and_update();
        let conf = config.borrow_and_update().loaded.settings.metrics.clone();
        let target = conf.enabled.then(|| paths.resolve(&conf.textfile));
        if let Some((old, _)) = &written
            && Some(old) != target.as_ref()
        {
            let _ = std::fs::remove_file(old);
            written = None;
        }
        if let Some(path) = target {
            let text = render(&gather(&s, &boot, last_sync));
            if written.as_ref().is_none_or(|(p, t)| *p != path || *t != text) {
                // World-readable: node_exporter runs as its own user.
                match write_atomic(&path, text.as_bytes(), 0o644) {
                    Ok(()) => {
                        debug!(file = %path.display(), "metrics written");
                        written = Some((path, text));
                    }
                    Err(e) => warn!(file = %path.display(), error = %e, "cannot write the metrics file"),
                }
            }
        }
        tokio::select! {
            r = health.changed() => if r.is_err() { return },
            r = servers.changed() => if r.is_err() { return },
            r = update.changed() => if r.is_err() { return },
            r = config.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fixed_name_with_the_current_value_set() {
        let text = render(&Inputs {
            status: Status::Red,
            healthy_cycles: 7,
            slot: "b".into(),
            action: Action::Bailout,
            image_version: "2026.11\"x".into(),
            update_state: UpdateState::Available,
            server: "s1".into(),
            config_errors: 2,
            last_sync: 1_800_000_000,
        });
        for line in [
            "gse_health_status{status=\"red\"} 1",
            "gse_health_status{status=\"green\"} 0",
            "gse_healthy_cycles 7",
            "gse_boot_info{slot=\"b\",action=\"bailout\",image_version=\"2026.11\\\"x\"} 1",
            "gse_update_state{state=\"available\"} 1",
            "gse_update_state{state=\"failed\"} 0",
            "gse_server_current{name=\"s1\"} 1",
            "gse_config_errors 2",
            "gse_last_sync_timestamp_seconds 1800000000",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        let no_server = render(&Inputs { status: Status::Green, ..Default::default() });
        assert!(!no_server.contains("gse_server_current{"), "{no_server}");
    }
}
