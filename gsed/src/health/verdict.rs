//! The health rules of DESIGN §5 as pure functions of the journal and the check
//! results: how a boot is judged, what status this boot already has, how many
//! healthy cycles a slot has had, and what one round of checks concludes. The
//! daemon's check loop, early boot's decision, the log archive and the metrics
//! all judge through here, so a rule changes in one place.

use gse_dbus::{
    boot::Verdict,
    health::{CheckKind, CheckResult, CheckState, Status},
};

use crate::journal::{Event, Record};

/// One boot's events folded: the last of healthy/red wins; a clean shutdown stays.
#[derive(Debug, Default, Clone, Copy)]
struct Fold {
    healthy: bool,
    red: bool,
    clean: bool,
}

impl Fold {
    fn add(&mut self, e: &Event) {
        match e {
            Event::Healthy { .. } => (self.healthy, self.red) = (true, false),
            Event::Red { .. } => (self.healthy, self.red) = (false, true),
            Event::CleanShutdown => self.clean = true,
            Event::BootStarted => {}
        }
    }

    fn verdict(self) -> Verdict {
        match (self.healthy, self.clean, self.red) {
            (true, true, _) => Verdict::HealthyCycle,
            (true, false, _) => Verdict::Dirty,
            (false, _, true) => Verdict::Red,
            _ => Verdict::Incomplete,
        }
    }
}

/// How the boot `boot_id` ended, from its journal records.
pub fn judge(records: &[Record], boot_id: &str) -> Verdict {
    let mut f = Fold::default();
    records.iter().filter(|r| r.boot_id == boot_id).for_each(|r| f.add(&r.event));
    f.verdict()
}

/// Boots of `slot` that completed a healthy cycle (healthy, then a clean shutdown).
pub fn healthy_cycles(records: &[Record], slot: &str) -> u64 {
    let mut boots: Vec<(&str, Fold)> = Vec::new();
    for r in records.iter().filter(|r| r.slot == slot) {
        let i = match boots.iter().position(|b| b.0 == r.boot_id) {
            Some(i) => i,
            None => {
                boots.push((&r.boot_id, Fold::default()));
                boots.len() - 1
            }
        };
        boots[i].1.add(&r.event);
    }
    boots.iter().filter(|b| b.1.verdict() == Verdict::HealthyCycle).count() as u64
}

/// The `HealthyCycles` property: the booted slot's count as early boot found it
/// in the flag (`base`), plus this boot once it completes its cycle; without an
/// early-boot record, the journal's own count.
pub fn cycles(base: Option<u64>, records: &[Record], slot: &str, boot_id: &str) -> u64 {
    match base {
        Some(base) => base + u64::from(judge(records, boot_id) == Verdict::HealthyCycle),
        None => healthy_cycles(records, slot),
    }
}

/// The status this boot already has in the journal (a restarted daemon takes it
/// up): time, status and reason of the last verdict.
pub fn recorded_status(records: &[Record], boot_id: &str) -> Option<(u64, Status, String)> {
    records.iter().rev().filter(|r| r.boot_id == boot_id).find_map(|r| match &r.event {
        Event::Healthy { reason } => Some((r.time, Status::Green, reason.clone())),
        Event::Red { reason, .. } => Some((r.time, Status::Red, reason.clone())),
        _ => None,
    })
}

/// What one round of checks concludes.
#[derive(Debug, Clone, PartialEq)]
pub enum Round {
    /// Every required check and the init system passed.
    Healthy { reason: String },
    /// The deadline passed with required checks (or the init system) not passed.
    Red { reason: String, failures: Vec<String> },
    /// Not yet: check again. `only_init` when the init system is all that is missing.
    Wait { only_init: bool },
}

/// Judges one round of `results`; `deadline` is shown in the reason.
pub fn round(results: &[CheckResult], deadline_passed: bool, deadline: &dyn std::fmt::Display) -> Round {
    let blocking: Vec<&CheckResult> =
        results.iter().filter(|r| r.kind != CheckKind::Wanted && r.state != CheckState::Passed).collect();
    if blocking.is_empty() {
        let reason = match results.iter().filter(|r| r.state != CheckState::Passed).count() {
            0 => "all checks passed".to_owned(),
            n => format!("all required checks passed; {n} wanted check(s) failed"),
        };
        return Round::Healthy { reason };
    }
    if deadline_passed {
        let reason = format!("{} required check(s) did not pass within the deadline of {deadline}", blocking.len());
        return Round::Red { reason, failures: failures(results) };
    }
    Round::Wait { only_init: blocking.iter().all(|r| r.kind == CheckKind::Init) }
}

/// One line per failed check, required first.
pub fn failures(results: &[CheckResult]) -> Vec<String> {
    let mut out: Vec<(CheckKind, String)> = results
        .iter()
        .filter(|r| r.state != CheckState::Passed)
        .map(|r| {
            let kind = match r.kind {
                CheckKind::Required => "required check",
                CheckKind::Wanted => "wanted check",
                CheckKind::Init => "init check",
            };
            let last = r.output.lines().last().map(|l| format!(": {l}")).unwrap_or_default();
            (r.kind, format!("{kind} '{}' {}{last}", r.name, r.detail))
        })
        .collect();
    out.sort_by_key(|(k, _)| *k == CheckKind::Wanted);
    out.into_iter().map(|(_, l)| l).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(boot: &str, slot: &str, event: Event) -> Record {
        Record { time: 1, boot_id: boot.into(), slot: slot.into(), event }
    }
    fn healthy() -> Event {
        Event::Healthy { reason: "ok".into() }
    }
    fn red() -> Event {
        Event::Red { reason: "bad".into(), failures: vec![] }
    }
    fn check(name: &str, kind: CheckKind, state: CheckState) -> CheckResult {
        CheckResult {
            name: name.into(),
            kind,
            state,
            detail: "exit 1".into(),
            output: String::new(),
            duration_ms: 0,
            runs: 1,
        }
    }

    #[test]
    fn a_boot_is_judged_by_its_last_verdict_and_its_shutdown() {
        use Event::{BootStarted, CleanShutdown};
        let table: &[(&[Event], Verdict)] = &[
            (&[BootStarted], Verdict::Incomplete),
            (&[], Verdict::Incomplete),
            (&[BootStarted, healthy()], Verdict::Dirty),
            (&[BootStarted, healthy(), CleanShutdown], Verdict::HealthyCycle),
            (&[BootStarted, red(), CleanShutdown], Verdict::Red),
            (&[BootStarted, red(), healthy(), CleanShutdown], Verdict::HealthyCycle),
            (&[BootStarted, healthy(), red(), CleanShutdown], Verdict::Red),
            (&[BootStarted, CleanShutdown], Verdict::Incomplete),
        ];
        for (events, want) in table {
            let mut records: Vec<Record> = events.iter().map(|e| rec("b1", "a", e.clone())).collect();
            // Another boot's records never count.
            records.push(rec("b2", "a", healthy()));
            records.push(rec("b2", "a", CleanShutdown));
            assert_eq!(judge(&records, "b1"), *want, "{events:?}");
        }
    }

    #[test]
    fn healthy_cycles_count_only_complete_cycles_of_the_slot() {
        let records = vec![
            rec("1", "a", healthy()),
            rec("1", "a", Event::CleanShutdown),
            rec("2", "a", healthy()), // lost power
            rec("3", "b", healthy()),
            rec("3", "b", Event::CleanShutdown),
            rec("4", "a", red()),
            rec("4", "a", Event::CleanShutdown),
            rec("5", "a", healthy()),
            rec("5", "a", Event::CleanShutdown),
        ];
        assert_eq!(healthy_cycles(&records, "a"), 2);
        assert_eq!(healthy_cycles(&records, "b"), 1);
        assert_eq!(healthy_cycles(&records, "c"), 0);
        // With the flag's count, only this boot is added.
        assert_eq!(cycles(Some(7), &records, "a", "5"), 8);
        assert_eq!(cycles(Some(7), &records, "a", "2"), 7);
        assert_eq!(cycles(None, &records, "a", "5"), 2);
    }

    #[test]
    fn the_recorded_status_is_the_last_verdict_of_this_boot() {
        let records = vec![rec("1", "a", red()), rec("1", "a", healthy()), rec("2", "a", red())];
        assert_eq!(recorded_status(&records, "1").map(|v| v.1), Some(Status::Green));
        assert_eq!(recorded_status(&records, "2").map(|v| v.1), Some(Status::Red));
        assert_eq!(recorded_status(&records, "3"), None);
    }

    #[test]
    fn a_round_concludes_by_required_checks_init_and_the_deadline() {
        use CheckKind::{Init, Required, Wanted};
        use CheckState::{Failed, Passed, Pending};
        let all_pass = [check("r", Required, Passed), check("w", Wanted, Passed), check("openrc", Init, Passed)];
        let wanted_fails = [check("r", Required, Passed), check("w", Wanted, Failed), check("openrc", Init, Passed)];
        let required_fails = [check("r", Required, Failed), check("openrc", Init, Passed)];
        let init_pending = [check("r", Required, Passed), check("openrc", Init, Pending)];
        let d = "30s";
        assert_eq!(round(&all_pass, false, &d), Round::Healthy { reason: "all checks passed".into() });
        // A verdict that is reached does not wait for the deadline, nor change after it.
        assert_eq!(round(&all_pass, true, &d), Round::Healthy { reason: "all checks passed".into() });
        assert_eq!(
            round(&wanted_fails, false, &d),
            Round::Healthy { reason: "all required checks passed; 1 wanted check(s) failed".into() }
        );
        assert_eq!(round(&required_fails, false, &d), Round::Wait { only_init: false });
        assert_eq!(round(&init_pending, false, &d), Round::Wait { only_init: true });
        match round(&required_fails, true, &d) {
            Round::Red { reason, failures } => {
                assert_eq!(reason, "1 required check(s) did not pass within the deadline of 30s");
                assert_eq!(failures, ["required check 'r' exit 1"]);
            }
            other => panic!("{other:?}"),
        }
        match round(&init_pending, true, &d) {
            Round::Red { failures, .. } => assert_eq!(failures, ["init check 'openrc' exit 1"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failures_list_required_before_wanted() {
        let mut results = [
            check("w", CheckKind::Wanted, CheckState::Failed),
            check("r", CheckKind::Required, CheckState::Failed),
            check("ok", CheckKind::Required, CheckState::Passed),
        ];
        results[1].output = "first\nlast line".into();
        assert_eq!(failures(&results), ["required check 'r' exit 1: last line", "wanted check 'w' exit 1"]);
    }
}
