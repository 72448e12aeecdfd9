//! `gsectl servers`: which server a client uses, through gsed.

use clap::{Args, Subcommand};
use gse_dbus::{
    BusAddress,
    servers::{Server, ServersProxy},
};

use crate::{Failure, connect, output};

#[derive(Args, Debug)]
pub struct ServersArgs {
    #[command(subcommand)]
    action: Option<ServersAction>,
}

#[derive(Subcommand, Debug)]
enum ServersAction {
    /// Use this server until `gsectl servers unpin` or a restart (root or group gse).
    Switch { name: String },
    /// Let gsed choose the server again.
    Unpin,
    /// Sync config.d from the current server now.
    Sync,
}

pub async fn servers(bus: &BusAddress, args: ServersArgs) -> Result<u8, Failure> {
    let conn = connect(bus).await?;
    let p = ServersProxy::new(&conn).await.map_err(|e| Failure::from_bus(e.into(), bus, "reach gsed"))?;
    match args.action {
        Some(ServersAction::Switch { name }) => {
            p.switch(&name).await.map_err(|e| Failure::from_bus(e, bus, "switch servers"))?
        }
        Some(ServersAction::Unpin) => p.unpin().await.map_err(|e| Failure::from_bus(e, bus, "unpin"))?,
        Some(ServersAction::Sync) => {
            let r = p.sync().await.map_err(|e| Failure::from_bus(e, bus, "sync"))?;
            println!("{r}");
        }
        None => {
            let fail = |e| Failure::from_bus(e, bus, "read the servers");
            let (current, pinned, rows, last) = (
                p.current().await.map_err(fail)?,
                p.pinned().await.map_err(fail)?,
                p.servers().await.map_err(fail)?,
                p.last_sync().await.map_err(fail)?,
            );
            if rows.is_empty() {
                println!("No server is configured (controller/server/server.info.conf).");
                return Ok(0);
            }
            println!("  {:<12} {:<8} {:>9} {:>6} {:>6}  URL", "SERVER", "STATE", "LATENCY", "LOAD", "FAILS");
            for row in rows {
                let s =
                    Server::try_from(row).map_err(|e| Failure::Error(format!("gsed sent a bad server row: {e}")))?;
                let mark = if s.name == current { "*" } else { " " };
                println!(
                    "{mark} {:<12} {:<8} {:>7.1}ms {:>6.2} {:>6}  {}",
                    s.name,
                    s.state.as_str(),
                    s.latency_ms,
                    s.load,
                    s.failures,
                    s.url
                );
            }
            println!(
                "Current: {}{}",
                if current.is_empty() { "none" } else { &current },
                if pinned { " (pinned)" } else { "" }
            );
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&last)
                && v["time"].as_u64().unwrap_or(0) > 0
            {
                println!(
                    "Last sync: {} UTC from {}: {}",
                    output::utc(v["time"].as_u64().unwrap_or(0)),
                    v["server"].as_str().unwrap_or("?"),
                    v["result"].as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(0)
}
