//! `gsectl network`: the wired interfaces gsed manages, through gsed.

use clap::{Args, Subcommand};
use gse_dbus::{
    BusAddress,
    network::{Interface, NetworkProxy},
};

use crate::{Failure, connect, output};

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
    let p = NetworkProxy::new(&conn).await.map_err(|e| Failure::from_bus(e.into(), bus, "reach gsed"))?;
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
    for row in rows {
        let i = Interface::try_from(row).map_err(|e| Failure::Error(format!("gsed sent a bad interface row: {e}")))?;
        let until = if i.lease_expiry > 0 { output::utc(i.lease_expiry) } else { "-".into() };
        println!(
            "{:<12} {:<11} {:<7} {:<18} {:<15} {:<15} {until}",
            i.name,
            i.state.as_str(),
            i.method.as_str(),
            i.addresses.join(","),
            if i.gateway.is_empty() { "-" } else { &i.gateway },
            if i.dns.is_empty() { "-".to_owned() } else { i.dns.join(",") }
        );
        if !i.detail.is_empty() && !i.state.is_up() {
            println!("             {}", i.detail);
        }
    }
    Ok(0)
}
