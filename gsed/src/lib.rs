//! gsed, the GSE daemon, as a library: the plain services that do the work, and the
//! thin D-Bus layer over them. [`cli`] is the `gsed` command over them (start, serve, shut down).

pub mod boot;
pub mod bus;
pub mod cli;
pub mod config;
pub mod fsutil;
pub mod health;
pub mod image;
pub mod journal;
pub mod logging;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod paths;
pub mod sd_notify;
pub mod servers;
