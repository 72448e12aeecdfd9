//! The daemon's half of the health cycle (DESIGN §5): record that this boot
//! started, run the checks until they pass or the deadline passes, record healthy or
//! red, and record the clean shutdown when the init system asks for it.
//!
//! [`HealthService`] is plain Rust; the bus layer only translates calls and turns
//! changes of its [`HealthSnapshot`] into D-Bus signals.

pub mod checks;
pub mod init;
pub mod verdict;

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use gse_dbus::{
    boot::BootRecord,
    health::{CheckKind, CheckResult, CheckState, HealthReport, ReportEvent, Status},
};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::{
    config::HealthConf,
    config::live::ConfigState,
    journal::{self, Event, Journal, JournalError, Record},
    paths::Paths,
};
use checks::CheckSpec;
use init::InitCheck;
use verdict::Round;

/// How many journal events the report carries.
const REPORT_EVENTS: usize = 12;
/// How much of one event the report carries (a journal written before reasons
/// were bounded may hold megabytes): the report always fits in a D-Bus message.
const REPORT_DETAIL: usize = 4096;
/// How often the init system's verdict is looked at while it is all that is missing.
const INIT_POLL: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("a reason is required")]
    EmptyReason,
}

/// What the bus publishes: every field that is a property or goes into a signal.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSnapshot {
    pub status: Status,
    pub reason: String,
    pub since: u64,
    pub booted_slot: String,
    pub healthy_cycles: u64,
    pub checks: Vec<CheckResult>,
}

pub struct HealthService {
    paths: Paths,
    config: watch::Receiver<Arc<ConfigState>>,
    boot_id: String,
    journal: Mutex<Journal>,
    state: watch::Sender<HealthSnapshot>,
    boot_record: Option<BootRecord>,
    boot_complete: AtomicBool,
    wake: Notify,
}

impl HealthService {
    /// Opens the journal and works out where this boot stands. Writes nothing yet:
    /// [`HealthService::run`] does, once the daemon owns its bus name.
    pub fn new(
        paths: &Paths,
        boot_id: &str,
        config: watch::Receiver<Arc<ConfigState>>,
    ) -> Result<Arc<Self>, HealthError> {
        let primary_slot = config.borrow().loaded.settings.boot.primary.clone();
        let (journal, recovery) = Journal::open(&paths.health_journal())?;
        if recovery.torn_bytes > 0 || recovery.skipped > 0 {
            warn!(
                journal = %journal.path().display(),
                torn_bytes = recovery.torn_bytes,
                skipped = recovery.skipped,
                "health journal had damaged records; they were ignored and every intact record kept"
            );
        }
        let boot_record = read_boot_record(&paths.boot_json());
        let booted_slot =
            boot_record.as_ref().map(|b| b.slot.clone()).filter(|s| !s.is_empty()).unwrap_or(primary_slot);
        let mut snapshot = HealthSnapshot {
            status: Status::Unknown,
            reason: "checks have not started".into(),
            since: journal::now(),
            healthy_cycles: verdict::cycles(
                boot_record.as_ref().map(|b| b.healthy_cycles),
                journal.records(),
                &booted_slot,
                boot_id,
            ),
            booted_slot,
            checks: Vec::new(),
        };
        // A restart within the same boot picks up where the last instance left off.
        if let Some((time, status, reason)) = verdict::recorded_status(journal.records(), boot_id) {
            snapshot.status = status;
            snapshot.reason = clip(reason, REPORT_DETAIL);
            snapshot.since = time;
        }
        Ok(Arc::new(HealthService {
            paths: paths.clone(),
            config,
            boot_id: boot_id.to_owned(),
            journal: Mutex::new(journal),
            state: watch::Sender::new(snapshot),
            boot_record,
            boot_complete: AtomicBool::new(false),
            wake: Notify::new(),
        }))
    }

    pub fn subscribe(&self) -> watch::Receiver<HealthSnapshot> {
        self.state.subscribe()
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        self.state.borrow().clone()
    }

    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// The health journal's records, every boot.
    pub fn records(&self) -> Vec<Record> {
        self.lock_journal().records().to_vec()
    }

    /// Records the start of this boot (once per boot_id) and runs the checks until a
    /// verdict. Returns at once when this boot already has one.
    pub async fn run(self: Arc<Self>) -> Result<(), HealthError> {
        let slot = self.snapshot().booted_slot;
        let is_new_boot = {
            let mut j = self.lock_journal();
            let seen = j.records().iter().any(|r| r.boot_id == self.boot_id && r.event == Event::BootStarted);
            if !seen {
                j.append(&self.boot_id, &slot, Event::BootStarted)?;
            }
            !seen
        };
        if is_new_boot {
            info!(boot_id = %self.boot_id, %slot, "new boot recorded");
        } else {
            info!(boot_id = %self.boot_id, status = %self.snapshot().status, "daemon restarted within the same boot");
        }
        if self.snapshot().status != Status::Unknown {
            return Ok(());
        }
        self.set_status(Status::Starting, "running health checks".into());
        self.check_until_verdict().await
    }

    /// The health settings in force now; a config change applies at the next round.
    fn conf(&self) -> HealthConf {
        self.config.borrow().loaded.settings.boot.health.clone()
    }

    async fn check_until_verdict(&self) -> Result<(), HealthError> {
        let started = Instant::now();
        let mut results: Vec<CheckResult> = Vec::new();
        loop {
            let conf = &self.conf();
            let deadline = started + conf.deadline.get();
            let init = InitCheck::detect(conf.init, &self.paths);
            let specs: Vec<CheckSpec> =
                checks::discover(&self.paths.resolve(&conf.required_checks), CheckKind::Required)
                    .into_iter()
                    .chain(checks::discover(&self.paths.resolve(&conf.wanted_checks), CheckKind::Wanted))
                    .collect();
            // Passed checks are not run again; new programs are picked up each round.
            let pending: Vec<&CheckSpec> = specs
                .iter()
                .filter(|s| {
                    !results.iter().any(|r| r.name == s.name && r.kind == s.kind && r.state == CheckState::Passed)
                })
                .collect();
            results.retain(|r| r.kind == CheckKind::Init || specs.iter().any(|s| s.name == r.name && s.kind == r.kind));
            let outcomes =
                futures_util::future::join_all(pending.iter().map(|s| checks::run(s, conf.check_timeout.get()))).await;
            for (spec, outcome) in pending.into_iter().zip(outcomes) {
                upsert(&mut results, spec.name.clone(), spec.kind, outcome);
            }
            let (state, detail) = init.check(self.boot_complete.load(Ordering::SeqCst));
            upsert(
                &mut results,
                init.name().into(),
                CheckKind::Init,
                checks::CheckRun { state, detail, output: String::new(), duration: Default::default() },
            );
            results.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
            self.state.send_if_modified(|s| {
                let changed = s.checks != results;
                s.checks = results.clone();
                changed
            });

            if self.snapshot().status != Status::Starting {
                return Ok(()); // an administrator decided meanwhile
            }
            let now = Instant::now();
            let only_init = match verdict::round(&results, now >= deadline, &conf.deadline) {
                Round::Healthy { reason } => return self.conclude(Event::Healthy { reason }, Status::Starting),
                Round::Red { reason, failures } => {
                    return self.conclude(Event::Red { reason, failures }, Status::Starting);
                }
                Round::Wait { only_init } => only_init,
            };
            // The init system's verdict is a cheap look at a directory: while it is
            // the only thing missing, look every second rather than every retry_interval.
            let retry = if only_init { conf.retry_interval.get().min(INIT_POLL) } else { conf.retry_interval.get() };
            let pause = retry.min(deadline - now);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Appends a verdict and publishes it; with `only_from`, only while the status is
    /// still that (so a check loop never overrides an administrator).
    fn conclude(&self, event: Event, only_from: Status) -> Result<(), HealthError> {
        let mut j = self.lock_journal();
        if self.snapshot().status != only_from {
            return Ok(());
        }
        self.record(&mut j, event)
    }

    fn record(&self, j: &mut Journal, event: Event) -> Result<(), HealthError> {
        let slot = self.snapshot().booted_slot;
        let (status, reason) = match &event {
            Event::Healthy { reason } => (Some(Status::Green), reason.clone()),
            Event::Red { reason, .. } => (Some(Status::Red), reason.clone()),
            _ => (None, String::new()),
        };
        if let Event::Red { failures, .. } = &event {
            for f in failures {
                warn!(failure = %f, "health check failed");
            }
        }
        j.append(&self.boot_id, &slot, event)?;
        let cycles =
            verdict::cycles(self.boot_record.as_ref().map(|b| b.healthy_cycles), j.records(), &slot, &self.boot_id);
        self.state.send_if_modified(|s| {
            let changed = s.healthy_cycles != cycles || status.is_some_and(|st| st != s.status || reason != s.reason);
            s.healthy_cycles = cycles;
            if let Some(st) = status {
                info!(status = %st, %reason, "health status changed");
                s.status = st;
                s.reason = reason;
                s.since = journal::now();
            }
            changed
        });
        Ok(())
    }

    fn set_status(&self, status: Status, reason: String) {
        self.state.send_if_modified(|s| {
            let changed = s.status != status;
            s.status = status;
            s.reason = reason;
            s.since = journal::now();
            changed
        });
    }

    fn lock_journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn mark_good(&self) -> Result<(), HealthError> {
        let mut j = self.lock_journal();
        self.record(&mut j, Event::Healthy { reason: "marked good by an administrator".into() })
    }

    pub fn mark_bad(&self, reason: &str) -> Result<(), HealthError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(HealthError::EmptyReason);
        }
        let mut j = self.lock_journal();
        let event = Event::Red { reason: format!("marked bad by an administrator: {reason}"), failures: Vec::new() };
        self.record(&mut j, event)
    }

    /// Records the clean shutdown of this boot; a second call in the same boot is a no-op.
    pub fn record_shutdown(&self) -> Result<(), HealthError> {
        let mut j = self.lock_journal();
        let done = j.records().iter().any(|r| r.boot_id == self.boot_id && r.event == Event::CleanShutdown);
        if !done {
            self.record(&mut j, Event::CleanShutdown)?;
            info!(boot_id = %self.boot_id, "clean shutdown recorded");
        }
        Ok(())
    }

    /// Whether the clean shutdown of this boot was recorded (the system is going down).
    pub fn shutdown_recorded(&self) -> bool {
        self.lock_journal().records().iter().any(|r| r.boot_id == self.boot_id && r.event == Event::CleanShutdown)
    }

    /// systemd reached boot-complete.target.
    pub fn boot_complete(&self) {
        self.boot_complete.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    pub fn report(&self) -> HealthReport {
        let s = self.snapshot();
        let events = {
            let j = self.lock_journal();
            let recs = j.records();
            recs[recs.len().saturating_sub(REPORT_EVENTS)..].iter().map(report_event).collect()
        };
        HealthReport {
            status: s.status,
            boot_id: self.boot_id.clone(),
            booted_slot: s.booted_slot,
            healthy_cycles: s.healthy_cycles,
            reason: s.reason,
            since: s.since,
            failures: verdict::failures(&s.checks),
            checks: s.checks,
            events,
            boot: self.boot_record.clone(),
        }
    }
}

fn upsert(results: &mut Vec<CheckResult>, name: String, kind: CheckKind, o: checks::CheckRun) {
    let runs = results.iter().find(|r| r.name == name && r.kind == kind).map_or(0, |r| r.runs);
    let new = CheckResult {
        name,
        kind,
        state: o.state,
        detail: o.detail,
        output: o.output,
        duration_ms: o.duration.as_millis() as u64,
        runs: runs + u32::from(kind != CheckKind::Init),
    };
    match results.iter_mut().find(|r| r.name == new.name && r.kind == kind) {
        Some(r) => *r = new,
        None => results.push(new),
    }
}

fn report_event(r: &Record) -> ReportEvent {
    let detail = match &r.event {
        Event::Healthy { reason } => reason.clone(),
        Event::Red { reason, failures } if failures.is_empty() => reason.clone(),
        Event::Red { reason, failures } => format!("{reason}: {}", failures.join("; ")),
        _ => String::new(),
    };
    ReportEvent {
        time: r.time,
        event: r.event.name().into(),
        boot_id: r.boot_id.clone(),
        slot: r.slot.clone(),
        detail: clip(detail, REPORT_DETAIL),
    }
}

/// `s` cut to at most `max` bytes, on a character boundary, marked when cut.
fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(" […]");
    }
    s
}

/// What early boot decided (`/run/gse/boot.json`); None without one.
/// The one reader of that file in the running system.
pub fn read_boot_record(path: &Path) -> Option<BootRecord> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(file = %path.display(), error = %e, "early-boot record is not valid; ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests;
