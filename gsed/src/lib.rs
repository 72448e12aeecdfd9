//! gsed, the GSE daemon, as a library: the plain services that do the work, and the
//! thin D-Bus layer over them. The binary (`bin/gsed/`) parses arguments and runs the daemon's life
//! (`daemon.rs`) or early boot's (`early.rs`) over them.

pub mod boot;
pub mod bus;
pub mod config;
pub mod fsutil;
pub mod health;
pub mod journal;
pub mod logging;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod paths;
pub mod sd_notify;
pub mod servers;
