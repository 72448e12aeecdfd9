//! `org.gentoo.Gse1.Health`: whether this boot is healthy, and the report behind it.

use serde::{Deserialize, Serialize};
use zbus::proxy;

use crate::DBusError;

wire_enum!(
    "health status",
    /// The value of the `Status` property.
    #[derive(Default)]
    pub enum Status {
        /// Nothing is known yet (the daemon has not started this boot's checks).
        #[default]
        Unknown = "unknown",
        /// Checks are running; the deadline has not passed.
        Starting = "starting",
        /// Every required check passed.
        Green = "green",
        /// A required check failed, the deadline passed, or an administrator marked it bad.
        Red = "red",
    }
);

/// Which list a check came from (reports list them in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// Must pass for the boot to be green.
    Required,
    /// Reported when it fails, but does not make the boot red.
    Wanted,
    /// The init system's own verdict: OpenRC's default runlevel, or systemd's boot-complete.
    Init,
}

/// Where a check stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckState {
    Pending,
    Passed,
    Failed,
    TimedOut,
}

/// One check's latest result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub kind: CheckKind,
    pub state: CheckState,
    /// One line on why it failed: exit code, signal, timeout, services not started.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The last lines the check printed (stdout and stderr), when it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
    pub duration_ms: u64,
    /// How many times it ran this boot (checks are retried until the deadline).
    pub runs: u32,
}

/// One event from the health journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportEvent {
    /// Seconds since the Unix epoch.
    pub time: u64,
    /// `boot-started`, `healthy`, `red` or `clean-shutdown`.
    pub event: String,
    pub boot_id: String,
    pub slot: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The whole health report: `GetReport()` and `gsectl health --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    pub status: Status,
    pub boot_id: String,
    pub booted_slot: String,
    pub healthy_cycles: u64,
    /// Why the status is what it is, in one sentence.
    pub reason: String,
    /// Seconds since the epoch at which the status last changed.
    pub since: u64,
    /// Every failure that matters, one line each (required and wanted checks).
    pub failures: Vec<String>,
    pub checks: Vec<CheckResult>,
    /// The most recent journal events, oldest first.
    pub events: Vec<ReportEvent>,
    /// What early boot decided (`/run/gse/boot.json`), when there is a record.
    #[serde(default)]
    pub boot: Option<crate::boot::BootRecord>,
}

#[proxy(interface = "org.gentoo.Gse1.Health", default_service = "org.gentoo.Gse1", default_path = "/org/gentoo/Gse1")]
pub trait Health {
    /// `unknown`, `starting`, `green` or `red`.
    #[zbus(property)]
    fn status(&self) -> Result<String, DBusError>;

    /// The slot this system booted from (`a`, `b`).
    #[zbus(property)]
    fn booted_slot(&self) -> Result<String, DBusError>;

    /// Completed healthy cycles (healthy startup and clean shutdown) of the booted slot.
    #[zbus(property)]
    fn healthy_cycles(&self) -> Result<u64, DBusError>;

    /// The full report as JSON (a [`HealthReport`]).
    fn get_report(&self) -> Result<String, DBusError>;

    /// Declares this boot healthy, whatever the checks say.
    fn mark_good(&self) -> Result<(), DBusError>;

    /// Declares this boot red, with a reason for the record.
    fn mark_bad(&self, reason: &str) -> Result<(), DBusError>;

    /// Records the clean shutdown of this boot; the init system calls it on shutdown.
    fn record_shutdown(&self) -> Result<(), DBusError>;

    /// Tells the daemon that systemd reached `boot-complete.target`.
    fn boot_complete(&self) -> Result<(), DBusError>;

    /// Emitted with the new status on every change of `Status` (besides
    /// `PropertiesChanged`). Named apart from the property's change stream.
    #[zbus(signal, name = "StatusChanged")]
    fn status_signal(&self, status: &str) -> zbus::Result<()>;
}
