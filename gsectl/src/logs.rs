//! `gsectl logs`: the archive of every boot's logs on this machine, read from the
//! files themselves (it works when gsed does not, which is when it is needed most).

use std::{io::Write, path::Path};

use clap::{Args, Subcommand};
use gsed::{logs, paths::Paths};

use crate::{Failure, output::utc};

#[derive(Args, Debug)]
pub struct LogsArgs {
    #[command(subcommand)]
    action: Option<LogsAction>,
    /// With no command: the list as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum LogsAction {
    /// Every boot in the archive, oldest first (the running one last).
    List {
        #[arg(long)]
        json: bool,
    },
    /// The logs of one boot: its id, a unique start of it, or -1 for the newest.
    Show {
        boot: String,
        /// Only this log: gsed, early, kernel, or a file such as var/log/messages.
        #[arg(long)]
        unit: Option<String>,
    },
}

pub fn run(root: &Path, args: LogsArgs) -> Result<u8, Failure> {
    let paths = Paths::new(root);
    match args.action {
        None => list(&paths, args.json),
        Some(LogsAction::List { json }) => list(&paths, json || args.json),
        Some(LogsAction::Show { boot, unit }) => show(&paths, &boot, unit.as_deref()),
    }
}

fn list(paths: &Paths, json: bool) -> Result<u8, Failure> {
    let (entries, errors) = logs::list(paths);
    for e in &errors {
        eprintln!("gsectl: skipped a damaged archive: {e}");
    }
    if json {
        let text = serde_json::to_string_pretty(&entries).map_err(|e| Failure::Error(e.to_string()))?;
        println!("{text}");
        return Ok(0);
    }
    if entries.is_empty() {
        println!("no boot logs in {}", paths.logs_dir().display());
        return Ok(0);
    }
    println!(
        "{:<36}  {:<19}  {:<4}  {:<12}  {:<9}  {:<13}  {:>9}",
        "BOOT", "STARTED (UTC)", "SLOT", "VERSION", "ACTION", "VERDICT", "SIZE"
    );
    for e in &entries {
        let m = &e.meta;
        let mut verdict = m.verdict.map_or("running", |v| v.as_str()).to_owned();
        if m.recovered {
            verdict.push('*');
        }
        println!(
            "{:<36}  {:<19}  {:<4}  {:<12}  {:<9}  {:<13}  {:>9}",
            m.boot_id,
            utc(m.started),
            m.slot,
            if m.image_version.is_empty() { "-" } else { &m.image_version },
            m.action.as_str(),
            verdict,
            human(e.size)
        );
    }
    if entries.iter().any(|e| e.meta.recovered) {
        println!("* no clean shutdown: archived by the next boot from what was spooled");
    }
    Ok(0)
}

fn show(paths: &Paths, boot: &str, unit: Option<&str>) -> Result<u8, Failure> {
    let entry = logs::find(paths, boot).map_err(|e| Failure::Error(e.to_string()))?;
    let files = logs::archive::read(&entry, unit).map_err(|e| Failure::Error(e.to_string()))?;
    if files.is_empty() {
        let what = unit.map(|u| format!("no log '{u}'")).unwrap_or_else(|| "no logs".into());
        return Err(Failure::Error(format!("boot {} has {what}", entry.meta.boot_id)));
    }
    let mut out = std::io::stdout().lock();
    let m = &entry.meta;
    let _ = writeln!(
        out,
        "# boot {} on slot {} ({}, {}), started {} UTC",
        m.boot_id,
        m.slot,
        m.action,
        m.verdict.map_or("running", |v| v.as_str()),
        utc(m.started)
    );
    for (name, data) in files {
        let _ = writeln!(out, "==> {name} <==");
        let _ = out.write_all(&data);
        if !data.ends_with(b"\n") && !data.is_empty() {
            let _ = writeln!(out);
        }
    }
    Ok(0)
}

fn human(n: u64) -> String {
    match n {
        n if n >= 10 << 20 => format!("{} MiB", n >> 20),
        n if n >= 10 << 10 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}
