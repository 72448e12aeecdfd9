//! `gsectl fleet --prometheus URL`: the whole room from the Prometheus that scrapes
//! every client's node_exporter (gsed's textfile metrics, DESIGN §13) — a table,
//! JSON for scripts, or one self-contained HTML page, red machines first.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use clap::Args;
use gsed::servers::http::Http;
use serde::Serialize;

use crate::{Failure, output::utc};

#[derive(Args, Debug)]
pub struct FleetArgs {
    /// Base URL of the Prometheus server (http://host:9090).
    #[arg(long)]
    prometheus: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the room as one self-contained HTML page to FILE.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// How long to wait for Prometheus.
    #[arg(long, default_value = "10")]
    timeout_secs: u64,
}

/// One machine as Prometheus last saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
struct Machine {
    machine: String,
    /// green, red, starting, unknown, or `down` when Prometheus cannot scrape it.
    health: String,
    slot: String,
    action: String,
    version: String,
    server: String,
    last_sync: u64,
    update: String,
    healthy_cycles: u64,
    config_errors: u64,
}

#[derive(serde::Deserialize)]
struct Reply {
    status: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(serde::Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<Sample>,
}

#[derive(serde::Deserialize)]
struct Sample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(http: &Http, base: &str, q: &str) -> Result<Vec<Sample>, Failure> {
    let url = format!("{}/api/v1/query?query={}", base.trim_end_matches('/'), encode(q));
    let body = http
        .get(&url, 64 << 20)
        .map_err(|e| Failure::Error(format!("cannot query Prometheus at {base}: {}", e.why)))?;
    let garbage = |why: String| {
        Failure::Error(format!("Prometheus at {base} answered something that is not a query result ({why})"))
    };
    let reply: Reply = serde_json::from_slice(&body).map_err(|e| garbage(e.to_string()))?;
    if reply.status != "success" {
        return Err(garbage(format!("status {}: {}", reply.status, reply.error)));
    }
    let data = reply.data.ok_or_else(|| garbage("no data".into()))?;
    if data.result_type != "vector" {
        return Err(garbage(format!("a {} where a vector was expected", data.result_type)));
    }
    Ok(data.result)
}

/// Builds the room from the samples of every `gse_*` series and of `up`.
fn room(gse: &[Sample], up: &[Sample]) -> Vec<Machine> {
    let mut by: BTreeMap<String, Machine> = BTreeMap::new();
    let mut jobs = std::collections::BTreeSet::new();
    for s in gse {
        let (Some(name), Some(instance)) = (s.metric.get("__name__"), s.metric.get("instance")) else { continue };
        if let Some(j) = s.metric.get("job") {
            jobs.insert(j.clone());
        }
        let m =
            by.entry(instance.clone()).or_insert_with(|| Machine { machine: instance.clone(), ..Default::default() });
        let label = |k: &str| s.metric.get(k).cloned().unwrap_or_default();
        let v: f64 = s.value.1.parse().unwrap_or(0.0);
        match name.as_str() {
            "gse_health_status" if v == 1.0 => m.health = label("status"),
            "gse_boot_info" => (m.slot, m.action, m.version) = (label("slot"), label("action"), label("image_version")),
            "gse_server_current" if v == 1.0 => m.server = label("name"),
            "gse_update_state" if v == 1.0 => m.update = label("state"),
            "gse_last_sync_timestamp_seconds" => m.last_sync = v as u64,
            "gse_healthy_cycles" => m.healthy_cycles = v as u64,
            "gse_config_errors" => m.config_errors = v as u64,
            _ => {}
        }
    }
    // A machine Prometheus cannot scrape has no fresh gse_* series: `up` tells.
    for s in up {
        let (Some(instance), Some(job)) = (s.metric.get("instance"), s.metric.get("job")) else { continue };
        if s.value.1 == "0" && jobs.contains(job) {
            let m = by
                .entry(instance.clone())
                .or_insert_with(|| Machine { machine: instance.clone(), ..Default::default() });
            m.health = "down".into();
        }
    }
    let mut out: Vec<Machine> = by.into_values().collect();
    for m in &mut out {
        if m.health.is_empty() {
            m.health = "unknown".into();
        }
    }
    out.sort_by(|a, b| (rank(&a.health), &a.machine).cmp(&(rank(&b.health), &b.machine)));
    out
}

/// Red first: what needs an administrator comes to the top.
fn rank(health: &str) -> u8 {
    match health {
        "red" => 0,
        "down" => 1,
        "starting" => 2,
        "unknown" => 3,
        _ => 4,
    }
}

pub fn run(args: FleetArgs) -> Result<u8, Failure> {
    if !args.prometheus.starts_with("http://") {
        return Err(Failure::Error(format!("--prometheus: '{}' must be an http:// URL", args.prometheus)));
    }
    let http = Http::new(Duration::from_secs(args.timeout_secs.max(1)));
    let gse = query(&http, &args.prometheus, r#"{__name__=~"gse_.+"}"#)?;
    let up = query(&http, &args.prometheus, "up")?;
    let machines = room(&gse, &up);
    let now = gsed::journal::now();
    if let Some(file) = &args.html {
        std::fs::write(file, html(&machines, now))
            .map_err(|e| Failure::Error(format!("cannot write {}: {e}", file.display())))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&machines).map_err(|e| Failure::Error(e.to_string()))?);
    } else if machines.is_empty() {
        println!("Prometheus at {} knows no GSE machine (no gse_* metrics)", args.prometheus);
    } else {
        println!(
            "{:<24} {:<8} {:<4} {:<9} {:<12} {:<10} {:<19} {:<11}",
            "MACHINE", "HEALTH", "SLOT", "ACTION", "VERSION", "SERVER", "LAST SYNC (UTC)", "UPDATE"
        );
        for m in &machines {
            println!(
                "{:<24} {:<8} {:<4} {:<9} {:<12} {:<10} {:<19} {:<11}",
                m.machine,
                m.health,
                dash(&m.slot),
                dash(&m.action),
                dash(&m.version),
                dash(&m.server),
                if m.last_sync == 0 { "-".into() } else { utc(m.last_sync) },
                dash(&m.update)
            );
        }
    }
    Ok(0)
}

fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One page, no outside resources: a grid of fixed-size cells coloured by health.
fn html(machines: &[Machine], now: u64) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for m in machines {
        *counts.entry(m.health.as_str()).or_default() += 1;
    }
    let summary: Vec<String> = counts.iter().map(|(h, n)| format!("{n} {h}")).collect();
    let mut cells = String::new();
    for m in machines {
        cells.push_str(&format!(
            "<div class=\"m {h}\" title=\"{title}\"><b>{name}</b><span>{h}</span><span>{ver} · slot {slot}</span><span>{srv}</span></div>\n",
            h = esc(&m.health),
            name = esc(&m.machine),
            ver = esc(dash(&m.version)),
            slot = esc(dash(&m.slot)),
            srv = esc(if m.server.is_empty() { "no server" } else { &m.server }),
            title = esc(&format!("action {}, update {}, last sync {}", dash(&m.action), dash(&m.update), if m.last_sync == 0 { "-".into() } else { utc(m.last_sync) })),
        ));
    }
    format!(
        r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>GSE room</title>
<style>
body {{ margin: 0; font: 13px sans-serif; background: #f4f4f4; }}
h1 {{ margin: 0; height: 48px; line-height: 48px; padding: 0 16px; font-size: 18px; background: #333; color: #fff; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, 180px); gap: 8px; padding: 16px; }}
.m {{ width: 180px; height: 100px; box-sizing: border-box; padding: 8px; color: #fff; display: flex; flex-direction: column; justify-content: space-between; }}
.m b {{ font-size: 14px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }}
.green {{ background: #2e9e4f; }} .red {{ background: #d32f2f; }} .down {{ background: #555; }}
.starting {{ background: #e0a000; }} .unknown {{ background: #8a8a8a; }}
</style></head>
<body><h1>GSE room: {total} machine(s), {summary} — {when} UTC</h1>
<div class="grid">
{cells}</div></body></html>
"#,
        total = machines.len(),
        summary = esc(&summary.join(", ")),
        when = utc(now),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, labels: &[(&str, &str)], v: &str) -> Sample {
        let mut metric: BTreeMap<String, String> =
            labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        metric.insert("__name__".into(), name.into());
        metric.insert("job".into(), "gse".into());
        Sample { metric, value: (0.0, v.into()) }
    }

    #[test]
    fn the_room_puts_red_and_unreachable_machines_first() {
        let gse = [
            s("gse_health_status", &[("instance", "a:9100"), ("status", "green")], "1"),
            s("gse_health_status", &[("instance", "a:9100"), ("status", "red")], "0"),
            s(
                "gse_boot_info",
                &[("instance", "a:9100"), ("slot", "a"), ("action", "normal"), ("image_version", "v1")],
                "1",
            ),
            s("gse_health_status", &[("instance", "z:9100"), ("status", "red")], "1"),
            s("gse_server_current", &[("instance", "z:9100"), ("name", "s2")], "1"),
        ];
        let up = [
            s("up", &[("instance", "a:9100")], "1"),
            s("up", &[("instance", "m:9100")], "0"),
            Sample {
                metric: [("instance".into(), "prom:9090".into()), ("job".into(), "prometheus".into())].into(),
                value: (0.0, "0".into()),
            },
        ];
        let room = room(&gse, &up);
        let order: Vec<(&str, &str)> = room.iter().map(|m| (m.machine.as_str(), m.health.as_str())).collect();
        assert_eq!(order, [("z:9100", "red"), ("m:9100", "down"), ("a:9100", "green")]);
        assert_eq!((room[2].slot.as_str(), room[2].version.as_str()), ("a", "v1"));
        assert_eq!(room[0].server, "s2");
        let page = html(&room, 0);
        assert_eq!(page.matches("<div class=\"m ").count(), 3);
        assert!(page.find("m red").unwrap() < page.find("m green").unwrap());
    }

    #[test]
    fn queries_are_url_encoded() {
        assert_eq!(encode(r#"{__name__=~"gse_.+"}"#), "%7B__name__%3D~%22gse_.%2B%22%7D");
    }
}
