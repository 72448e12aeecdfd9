//! `gsectl config`: check a config.d tree offline, or show the configuration in
//! force from the daemon.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use gse_dbus::{
    BusAddress,
    config::{ConfigDump, ConfigProxy},
};
use gsed::{config, paths::Paths};

use crate::{Failure, connect};

#[derive(Args, Debug)]
pub struct ConfigArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Validate a config.d tree offline and print every error (exit 1 if any).
    /// Without DIR, checks the layers this machine loads (image defaults and the synced tree).
    Check { dir: Option<PathBuf> },
    /// Print the configuration in force, from gsed: every value, or those under KEY.
    Show {
        key: Option<String>,
        /// Add the file and line that set each value.
        #[arg(long)]
        origin: bool,
    },
    /// Ask gsed to read config.d again now (root or group gse).
    Reload,
}

pub async fn run(bus: &BusAddress, root: &std::path::Path, args: ConfigArgs) -> Result<u8, Failure> {
    match args.action {
        Action::Check { dir } => Ok(check(root, dir)),
        Action::Show { key, origin } => show(bus, key, origin).await,
        Action::Reload => {
            let conn = connect(bus).await?;
            let proxy = ConfigProxy::new(&conn).await.map_err(|e| Failure::from_bus(e.into(), bus, "reach gsed"))?;
            proxy.reload().await.map_err(|e| Failure::from_bus(e, bus, "reload the configuration"))?;
            Ok(0)
        }
    }
}

fn check(root: &std::path::Path, dir: Option<PathBuf>) -> u8 {
    let (what, result) = match dir {
        Some(d) => (d.display().to_string(), config::check_tree(&d)),
        None => {
            let layers = config::layers(&Paths::new(root));
            let names = layers.iter().map(|l| l.display().to_string()).collect::<Vec<_>>().join(" < ");
            (names, config::load(&layers))
        }
    };
    match result {
        Ok(_) => {
            println!("{what}: valid");
            0
        }
        Err(errors) => {
            for e in &errors {
                println!("{e}");
            }
            eprintln!("{what}: {} error(s)", errors.len());
            1
        }
    }
}

async fn show(bus: &BusAddress, key: Option<String>, origin: bool) -> Result<u8, Failure> {
    let conn = connect(bus).await?;
    let proxy = ConfigProxy::new(&conn).await.map_err(|e| Failure::from_bus(e.into(), bus, "reach gsed"))?;
    let json = proxy.dump().await.map_err(|e| Failure::from_bus(e, bus, "read the configuration"))?;
    let dump: ConfigDump = serde_json::from_str(&json)
        .map_err(|e| Failure::Error(format!("gsed sent a configuration this gsectl cannot read: {e}")))?;
    let prefix = key.as_ref().map(|k| config::join_key(&config::split_key(k)));
    let rows: Vec<_> = dump
        .values
        .iter()
        .filter(|v| prefix.as_ref().is_none_or(|p| v.key == *p || v.key.starts_with(&format!("{p}."))))
        .collect();
    if rows.is_empty()
        && let Some(k) = key
    {
        return Err(Failure::Error(format!("no configuration key '{k}'")));
    }
    for v in rows {
        let value = toml_like(&v.value);
        match (&v.origin, origin) {
            (Some(o), true) => println!("{} = {value}    # {o}", v.key),
            (None, true) => println!("{} = {value}    # built-in default", v.key),
            _ => println!("{} = {value}", v.key),
        }
    }
    if !dump.errors.is_empty() {
        eprintln!("config.d has errors; the values above are the last good configuration:");
        for e in &dump.errors {
            eprintln!("  {e}");
        }
    }
    Ok(0)
}

/// Values printed the way they are written in the files.
fn toml_like(v: &serde_json::Value) -> String {
    serde_json::from_value::<toml::Value>(v.clone()).map(|t| t.to_string()).unwrap_or_else(|_| v.to_string())
}
