//! `gsectl health`: the status of this boot, and the administrator's verdicts.

use clap::{Args, Subcommand};
use gse_dbus::{
    BusAddress,
    health::{CheckState, HealthProxy, HealthReport, Status},
};

use crate::{Failure, connect, output};

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// Print the full report as JSON (the document GetReport returns).
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Declare this boot healthy, whatever the checks say.
    MarkGood,
    /// Declare this boot red, giving the reason for the record.
    MarkBad { reason: String },
    /// Record the clean shutdown of this boot (the init system runs this on shutdown).
    RecordShutdown,
    /// Tell gsed that systemd reached boot-complete.target (run by gse-boot-complete.service).
    BootComplete,
}

pub async fn run(bus: &BusAddress, args: HealthArgs) -> Result<u8, Failure> {
    let conn = connect(bus).await?;
    let proxy = HealthProxy::new(&conn).await.map_err(|e| Failure::from_bus(e.into(), bus, "reach gsed"))?;
    let fail = |what: &'static str| move |e| Failure::from_bus(e, bus, what);
    match args.action {
        Some(Action::MarkGood) => proxy.mark_good().await.map_err(fail("mark this boot good"))?,
        Some(Action::MarkBad { reason }) => proxy.mark_bad(&reason).await.map_err(fail("mark this boot bad"))?,
        Some(Action::RecordShutdown) => proxy.record_shutdown().await.map_err(fail("record the shutdown"))?,
        Some(Action::BootComplete) => proxy.boot_complete().await.map_err(fail("report boot-complete"))?,
        None => {
            let json = proxy.get_report().await.map_err(fail("read the health report"))?;
            let report: HealthReport = serde_json::from_str(&json)
                .map_err(|e| Failure::Error(format!("gsed sent a report this gsectl cannot read: {e}")))?;
            if args.json {
                println!("{json}");
            } else {
                print!("{}", render(&report));
            }
            return Ok(exit_code(report.status));
        }
    }
    Ok(0)
}

fn exit_code(status: Status) -> u8 {
    match status {
        Status::Green => 0,
        Status::Red => 1,
        Status::Starting | Status::Unknown => 2,
    }
}

/// The short human summary.
fn render(r: &HealthReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let word = match r.status {
        Status::Green => output::paint("GREEN", "1;32"),
        Status::Red => output::paint("RED", "1;31"),
        Status::Starting => output::paint("STARTING", "1;33"),
        Status::Unknown => output::paint("UNKNOWN", "1;33"),
    };
    let _ = writeln!(out, "Health:  {word} — {} (since {} UTC)", r.reason, output::utc(r.since));
    let _ =
        writeln!(out, "Boot:    slot {}, {} healthy cycle(s), boot id {}", r.booted_slot, r.healthy_cycles, r.boot_id);
    if let Some(boot) = &r.boot {
        let _ = writeln!(out, "Early:   {} — {}", boot.action, boot.reason);
    }
    if !r.failures.is_empty() {
        let _ = writeln!(out, "Failures:");
        for f in &r.failures {
            let _ = writeln!(out, "  {} {f}", output::paint("✗", "31"));
        }
        for c in r.checks.iter().filter(|c| c.state != CheckState::Passed && !c.output.is_empty()) {
            let _ = writeln!(out, "Output of '{}':", c.name);
            for line in c.output.lines() {
                let _ = writeln!(out, "  | {line}");
            }
        }
    }
    if !r.events.is_empty() {
        let _ = writeln!(out, "Recent events:");
        for e in r.events.iter().rev().take(6).rev() {
            let short: String = e.boot_id.chars().take(8).collect();
            let _ =
                writeln!(out, "  {}  {:<15} slot {}  boot {short}  {}", output::utc(e.time), e.event, e.slot, e.detail);
        }
    }
    out
}
