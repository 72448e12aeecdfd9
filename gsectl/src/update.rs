//! `gsectl update`: the image update's state and decisions, through gsed.

use std::io::{IsTerminal, Write};

use clap::{Args, Subcommand};
use futures_util::StreamExt;
use gse_dbus::{
    BusAddress,
    servers::{UpdateProxy, UpdateState},
};
use serde::Serialize;

use crate::{Failure, connect};

#[derive(Args, Debug)]
pub struct UpdateArgs {
    #[command(subcommand)]
    action: Option<UpdateAction>,
    /// Print the state as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum UpdateAction {
    /// Check the channel on the current server now.
    Check,
    /// Take the available version, or try again one that failed (root or group gse).
    Approve,
    /// Stay on the running version (root or group gse).
    Decline,
    /// Wait until the new version is installed (exit 0), or failed (exit 1).
    Wait,
}

#[derive(Serialize)]
struct View {
    local_version: String,
    available_version: String,
    state: String,
    detail: String,
    progress: f64,
    bytes_done: u64,
    bytes_total: u64,
    target_slot: String,
}

async fn view(p: &UpdateProxy<'_>) -> Result<View, gse_dbus::DBusError> {
    Ok(View {
        local_version: p.local_version().await?,
        available_version: p.available_version().await?,
        state: p.state().await?,
        detail: p.detail().await?,
        progress: p.progress().await?,
        bytes_done: p.bytes_done().await?,
        bytes_total: p.bytes_total().await?,
        target_slot: p.target_slot().await?,
    })
}

pub async fn update(bus: &BusAddress, args: UpdateArgs) -> Result<u8, Failure> {
    let conn = connect(bus).await?;
    let p = UpdateProxy::new(&conn).await.map_err(|e| Failure::from_bus(e.into(), bus, "reach gsed"))?;
    match args.action {
        Some(UpdateAction::Check) => {
            let s = p.check().await.map_err(|e| Failure::from_bus(e, bus, "check for updates"))?;
            if s.parse() == Ok(UpdateState::Error) {
                let detail = p.detail().await.unwrap_or_default();
                return Err(Failure::Error(format!("the version check failed: {detail}")));
            }
            println!("{s}");
        }
        Some(UpdateAction::Approve) => {
            p.approve().await.map_err(|e| Failure::from_bus(e, bus, "approve the update"))?
        }
        Some(UpdateAction::Decline) => {
            p.decline().await.map_err(|e| Failure::from_bus(e, bus, "decline the update"))?
        }
        Some(UpdateAction::Wait) => return wait(bus, &p).await,
        None => {
            let v = view(&p).await.map_err(|e| Failure::from_bus(e, bus, "read the update state"))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v).expect("view serialises"));
                return Ok(0);
            }
            println!("Running:   {}", v.local_version);
            println!("Available: {}", v.available_version);
            let detail = if v.detail.is_empty() { String::new() } else { format!(" ({})", v.detail) };
            println!("State:     {}{detail}", v.state);
            if !v.target_slot.is_empty() {
                println!("Slot:      {}", v.target_slot);
            }
            if matches!(v.state.parse(), Ok(UpdateState::Downloading | UpdateState::Installing)) {
                println!(
                    "Progress:  {:.0}% ({} of {} MB)",
                    v.progress * 100.0,
                    v.bytes_done >> 20,
                    v.bytes_total >> 20
                );
            }
        }
    }
    Ok(0)
}

/// Follows the state by its change signals until the update ends one way or the other.
async fn wait(bus: &BusAddress, p: &UpdateProxy<'_>) -> Result<u8, Failure> {
    let fail = |e| Failure::from_bus(e, bus, "follow the update");
    let mut states = p.receive_state_changed().await;
    let mut done = p.receive_bytes_done_changed().await;
    let tty = std::io::stderr().is_terminal();
    loop {
        let v = view(p).await.map_err(fail)?;
        let state = v.state.parse::<UpdateState>().unwrap_or_default();
        if tty {
            let width = 30;
            let filled = ((v.progress.clamp(0.0, 1.0)) * width as f64) as usize;
            eprint!(
                "\r{:<12} [{}{}] {:>3.0}% {:>6} / {} MB ",
                v.state,
                "#".repeat(filled),
                " ".repeat(width - filled),
                v.progress * 100.0,
                v.bytes_done >> 20,
                v.bytes_total >> 20
            );
            let _ = std::io::stderr().flush();
        }
        match state {
            UpdateState::Installed | UpdateState::Trial | UpdateState::UpToDate => {
                if tty {
                    eprintln!();
                }
                println!("{}{}", v.state, if v.detail.is_empty() { String::new() } else { format!(": {}", v.detail) });
                return Ok(0);
            }
            UpdateState::Failed | UpdateState::Error | UpdateState::Declined => {
                if tty {
                    eprintln!();
                }
                return Err(Failure::Error(format!("update {}: {}", v.state, v.detail)));
            }
            _ => {}
        }
        tokio::select! {
            s = states.next() => if s.is_none() { return Err(Failure::Error("gsed went away".into())) },
            _ = done.next() => {}
        }
    }
}
