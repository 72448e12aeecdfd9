//! `gsectl keygen`, `gsectl publish` (server side), `gsectl servers` and
//! `gsectl update` (client side, through gsed).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use gse_dbus::{
    BusAddress,
    servers::{ServersProxy, UpdateProxy},
};
use gsed::{fsutil::write_atomic, servers::manifest, servers::publish};

use crate::{Failure, connect, output};

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the secret key (mode 0600); keep it on the publishing server only.
    #[arg(long)]
    secret: PathBuf,
    /// Where to write the public key (a minisign .pub file).
    #[arg(long)]
    public: PathBuf,
    /// Replace existing key files.
    #[arg(long)]
    force: bool,
}

pub fn keygen(args: KeygenArgs) -> Result<u8, Failure> {
    for p in [&args.secret, &args.public] {
        if p.exists() && !args.force {
            return Err(Failure::Error(format!("{} exists; pass --force to replace it", p.display())));
        }
    }
    let (public, secret, line) = manifest::keygen().map_err(|e| Failure::Error(e.to_string()))?;
    let write = |p: &Path, data: &str, mode| {
        write_atomic(p, data.as_bytes(), mode).map_err(|e| Failure::Error(format!("cannot write {}: {e}", p.display())))
    };
    write(&args.secret, &secret, 0o600)?;
    write(&args.public, &public, 0o644)?;
    eprintln!("keygen: secret key {}, public key {}", args.secret.display(), args.public.display());
    eprintln!("keygen: put this line in controller/server/server.info.conf:");
    println!("public_key = \"{line}\"");
    Ok(0)
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    #[command(subcommand)]
    what: Publish,
}

#[derive(Subcommand, Debug)]
enum Publish {
    /// Validate a config.d tree and publish it, signed, under TREE/gse1/config.d.
    Config {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        to: PathBuf,
        #[arg(long)]
        secret: PathBuf,
    },
    /// Place an image under TREE/gse1/images/VERSION/ and point a channel at it.
    Image {
        #[arg(long)]
        image: PathBuf,
        #[arg(long)]
        version: String,
        #[arg(long)]
        channel: String,
        #[arg(long)]
        to: PathBuf,
        #[arg(long)]
        secret: PathBuf,
    },
}

pub fn publish(args: PublishArgs) -> Result<u8, Failure> {
    match args.what {
        Publish::Config { from, to, secret } => {
            let (id, m) = publish::publish_config(&from, &to, &secret)
                .map_err(|e| Failure::Error(format!("publish config: {e}")))?;
            eprintln!(
                "publish: {} files of {} as {id} under {}",
                m.entries.len(),
                from.display(),
                to.join("gse1/config.d").display()
            );
        }
        Publish::Image { image, version, channel, to, secret } => {
            let ch = publish::publish_image(&image, &version, &channel, &to, &secret)
                .map_err(|e| Failure::Error(format!("publish image: {e}")))?;
            eprintln!(
                "publish: channel {} now offers {} ({} bytes, sha256 {})",
                ch.channel, ch.version, ch.size, ch.sha256
            );
        }
    }
    Ok(0)
}

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
            for (name, url, state, lat, load, fails) in rows {
                let mark = if name == current { "*" } else { " " };
                println!("{mark} {name:<12} {state:<8} {:>7.1}ms {load:>6.2} {fails:>6}  {url}", lat);
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

#[derive(Args, Debug)]
pub struct UpdateArgs {
    #[command(subcommand)]
    action: Option<UpdateAction>,
}

#[derive(Subcommand, Debug)]
enum UpdateAction {
    /// Check the channel on the current server now.
    Check,
    /// Take the available version (root or group gse).
    Approve,
    /// Stay on the running version (root or group gse).
    Decline,
}

pub async fn update(bus: &BusAddress, args: UpdateArgs) -> Result<u8, Failure> {
    let conn = connect(bus).await?;
    let p = UpdateProxy::new(&conn).await.map_err(|e| Failure::from_bus(e.into(), bus, "reach gsed"))?;
    match args.action {
        Some(UpdateAction::Check) => {
            let s = p.check().await.map_err(|e| Failure::from_bus(e, bus, "check for updates"))?;
            if s == "error" {
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
        None => {
            let fail = |e| Failure::from_bus(e, bus, "read the update state");
            println!("Running:   {}", p.local_version().await.map_err(fail)?);
            println!("Available: {}", p.available_version().await.map_err(fail)?);
            let (state, detail) = (p.state().await.map_err(fail)?, p.detail().await.map_err(fail)?);
            println!("State:     {state}{}", if detail.is_empty() { String::new() } else { format!(" ({detail})") });
        }
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct NetworkArgs {
    #[command(subcommand)]
    action: Option<NetworkAction>,
}

#[derive(Subcommand, Debug)]
enum NetworkAction {
    /// Renew every DHCP lease now (root or group gse).
    Renew,
}

pub async fn network(bus: &BusAddress, args: NetworkArgs) -> Result<u8, Failure> {
    let conn = connect(bus).await?;
    let p = gse_dbus::network::NetworkProxy::new(&conn)
        .await
        .map_err(|e| Failure::from_bus(e.into(), bus, "reach gsed"))?;
    if let Some(NetworkAction::Renew) = args.action {
        p.renew().await.map_err(|e| Failure::from_bus(e, bus, "renew the leases"))?;
        return Ok(0);
    }
    let rows = p.interfaces().await.map_err(|e| Failure::from_bus(e, bus, "read the network state"))?;
    if rows.is_empty() {
        println!("No interface is managed (system/network.conf).");
        return Ok(0);
    }
    println!(
        "{:<12} {:<11} {:<7} {:<18} {:<15} {:<15} LEASE UNTIL",
        "INTERFACE", "STATE", "METHOD", "ADDRESS", "GATEWAY", "DNS"
    );
    for (name, state, _carrier, method, addrs, gw, dns, expiry, detail) in rows {
        let until = if expiry > 0 { output::utc(expiry) } else { "-".into() };
        println!(
            "{name:<12} {state:<11} {method:<7} {:<18} {:<15} {:<15} {until}",
            addrs.join(","),
            if gw.is_empty() { "-" } else { &gw },
            if dns.is_empty() { "-".to_owned() } else { dns.join(",") }
        );
        if !detail.is_empty() && !matches!(state.as_str(), "bound" | "static") {
            println!("             {detail}");
        }
    }
    Ok(0)
}
