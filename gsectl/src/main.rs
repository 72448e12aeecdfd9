//! gsectl: the administrator's and the init system's way to talk to gsed.
//!
//! Called as `gsed` (a link, in the initramfs), it is gsed.
//!
//! Exit codes follow DESIGN §9: for `health`, 0 green, 1 red, 2 starting or
//! unknown; for every command, 3 when gsed cannot be reached and 1 on other errors.

mod boot;
mod config;
mod fleet;
mod health;
mod image;
mod initramfs;
mod install;
mod logs;
mod network;
mod output;
mod publish;
mod servers;
mod update;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use gse_dbus::{BusAddress, DBusError};

#[derive(Parser, Debug)]
#[command(version, about = "Control and inspect GSE (gsed) on this machine")]
struct Cli {
    /// Bus where gsed runs: system (default), session, or a D-Bus address
    /// (unix:path=...). For `boot`, the early socket under --root by default.
    #[arg(long, global = true)]
    bus: Option<BusAddress>,
    /// Prefix for every path GSE uses, for offline commands.
    #[arg(long, global = true, default_value = "/")]
    root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show whether this boot is healthy (exit 0 green, 1 red, 2 starting/unknown, 3 no daemon).
    Health(health::HealthArgs),
    /// Check config.d offline, or show the configuration in force.
    Config(config::ConfigArgs),
    /// Early boot (run by the initramfs hook).
    Boot(boot::BootArgs),
    /// Prepare this machine's disk: user-data tree, flag key, first boot flags;
    /// with --format also partitions and filesystems from drives.conf.
    Provision(boot::ProvisionArgs),
    /// Install an image into the slots of this (provisioned) machine, with fresh flags.
    Install(install::InstallArgs),
    /// The wired network: state of each interface (and renew).
    Network(network::NetworkArgs),
    /// The servers this client syncs from (and switch, unpin, sync).
    Servers(servers::ServersArgs),
    /// The version check (and check, approve, decline).
    Update(update::UpdateArgs),
    /// Make a minisign key pair for signing what the server publishes.
    Keygen(publish::KeygenArgs),
    /// The archived logs of every boot on this machine (list, show BOOT).
    Logs(logs::LogsArgs),
    /// The room at a glance, from the Prometheus that scrapes it.
    Fleet(fleet::FleetArgs),
    /// Server side: publish config.d or an image into a static tree.
    Publish(publish::PublishArgs),
    /// Server side: build a system image (stage4) from a root tree.
    Image(ImageArgs),
    /// Server side: build the initramfs that runs GSE's early boot.
    Initramfs(InitramfsArgs),
}

#[derive(clap::Args, Debug)]
struct InitramfsArgs {
    #[command(subcommand)]
    action: InitramfsAction,
}

#[derive(Subcommand, Debug)]
enum InitramfsAction {
    /// Build a self-contained initramfs: modules, gsed, gsectl, busybox, hook, config.d.
    Build(initramfs::InitramfsBuildArgs),
}

#[derive(clap::Args, Debug)]
struct ImageArgs {
    #[command(subcommand)]
    action: ImageAction,
}

#[derive(Subcommand, Debug)]
enum ImageAction {
    /// Turn a root tree into a GSE image: make.conf, hooks, GSE, stateless layout, tar.zst.
    Build(image::ImageBuildArgs),
}

/// How a command ended; mapped to the exit code in one place.
pub enum Failure {
    /// gsed or the bus cannot be reached: exit 3.
    Unreachable(String),
    /// Anything else: exit 1.
    Error(String),
}

impl Failure {
    /// Turns a bus error into a message a person can act on.
    pub fn from_bus(e: DBusError, bus: &BusAddress, what: &str) -> Failure {
        if e.is_unreachable() {
            return Failure::Unreachable(unreachable_message(bus));
        }
        // gsed's own refusal names the polkit action; the bus policy's does not.
        if let DBusError::AccessDenied(m) = &e {
            return Failure::Error(format!("permission denied: cannot {what}: {m}"));
        }
        if e.is_access_denied() {
            return Failure::Error(format!(
                "permission denied: only root, members of group 'gse' and users polkit allows (org.gentoo.gse1.*) may {what}"
            ));
        }
        Failure::Error(match e {
            DBusError::ZBus(zbus::Error::MethodError(name, msg, _)) => {
                format!("cannot {what}: {} ({name})", msg.unwrap_or_default())
            }
            DBusError::ZBus(e) => format!("cannot {what}: {e}"),
            DBusError::InvalidArgs(m)
            | DBusError::NotPossible(m)
            | DBusError::InvalidConfig(m)
            | DBusError::Failed(m)
            | DBusError::AccessDenied(m) => format!("cannot {what}: {m}"),
        })
    }
}

/// The configuration offline commands work from: a given tree, or the layers
/// this machine loads (under --root).
pub fn offline_config(
    paths: &gsed::paths::Paths,
    dir: Option<&std::path::Path>,
) -> Result<gsed::config::Loaded, Failure> {
    match dir {
        Some(dir) => gsed::config::check_tree(dir),
        None => gsed::config::load(&gsed::config::layers(paths)),
    }
    .map_err(|errors| {
        Failure::Error(format!(
            "the configuration is invalid:\n{}",
            errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n")
        ))
    })
}

const START_HINT: &str = "start it with 'rc-service gsed start' (OpenRC) or 'systemctl start gsed' (systemd)";

pub fn unreachable_message(bus: &BusAddress) -> String {
    format!("gsed is not running on {bus}; {START_HINT}")
}

/// Connects to the bus, or explains why not.
pub async fn connect(bus: &BusAddress) -> Result<zbus::Connection, Failure> {
    bus.connect().await.map_err(|e| {
        Failure::Unreachable(format!("cannot reach {bus} ({e}); is the D-Bus daemon running? Then {START_HINT}"))
    })
}

fn main() -> ExitCode {
    // One binary is both commands in the initramfs: there, gsed is a link to gsectl.
    let called = std::env::args_os().next().map(PathBuf::from);
    if called.as_deref().and_then(|p| p.file_name()).is_some_and(|n| n == "gsed") {
        return gsed::cli::main();
    }
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gsectl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bus = cli.bus.clone().unwrap_or(BusAddress::System);
    let result = rt.block_on(async {
        match cli.command {
            Command::Health(args) => health::run(&bus, args).await,
            Command::Config(args) => config::run(&bus, &cli.root, args).await,
            Command::Boot(args) => boot::run(cli.bus.as_ref(), &cli.root, args).await,
            Command::Provision(args) => boot::provision(&cli.root, args),
            Command::Install(args) => install::install(&cli.root, args),
            Command::Servers(args) => servers::servers(&bus, args).await,
            Command::Network(args) => network::network(&bus, args).await,
            Command::Update(args) => update::update(&bus, args).await,
            Command::Logs(args) => logs::run(&cli.root, args),
            Command::Fleet(args) => fleet::run(args),
            Command::Keygen(args) => publish::keygen(args),
            Command::Publish(args) => publish::publish(args),
            Command::Image(ImageArgs { action: ImageAction::Build(args) }) => image::build(args),
            Command::Initramfs(InitramfsArgs { action: InitramfsAction::Build(args) }) => initramfs::build(args),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Unreachable(m)) => {
            eprintln!("gsectl: {m}");
            ExitCode::from(3)
        }
        Err(Failure::Error(m)) => {
            eprintln!("gsectl: {m}");
            ExitCode::from(1)
        }
    }
}
