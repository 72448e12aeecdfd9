use super::*;
use crate::config::BootConf;

fn flag(slot: &str, n: u64) -> FlagState {
    FlagState::Valid {
        flag: BootFlag { slot: slot.into(), image_version: "v1".into(), healthy_cycles: n, last_good: 0 },
    }
}

fn rec(boot: &str, slot: &str, event: Event) -> Record {
    Record { time: 0, boot_id: boot.into(), slot: slot.into(), event }
}

fn healthy() -> Event {
    Event::Healthy { reason: "ok".into() }
}

fn flags(a: FlagState, b: FlagState) -> BTreeMap<String, FlagState> {
    BTreeMap::from([("a".into(), a), ("b".into(), b)])
}

#[test]
fn healthy_cycle_renews_the_flag_and_resets_attempts() {
    let conf = BootConf::default();
    let records = [rec("1", "a", Event::BootStarted), rec("1", "a", healthy()), rec("1", "a", Event::CleanShutdown)];
    let old = BootState { attempts: BTreeMap::from([("a".into(), 1)]), ..Default::default() };
    let d = decide(&conf, &records, &old, &flags(flag("a", 4), flag("b", 0)), 99);
    assert_eq!((d.slot.as_str(), d.action), ("a", Action::Normal));
    assert_eq!(d.write_flags["a"].healthy_cycles, 5);
    assert_eq!(d.write_flags["a"].last_good, 99);
    assert_eq!(d.state.attempts("a"), 1, "reset, then this boot counted");
    assert_eq!(d.last_boot.unwrap().verdict, Verdict::HealthyCycle);

    // The same boot is not judged twice (early boot ran again without a new boot).
    let again = decide(&conf, &records, &d.state, &flags(flag("a", 5), flag("b", 0)), 100);
    assert!(again.write_flags.is_empty());
    assert_eq!(again.state.attempts("a"), 2);
}

#[test]
fn max_attempts_incomplete_boots_trigger_the_policy() {
    let mut conf = BootConf::default();
    conf.health.max_attempts = 3;
    let mut state = BootState::default();
    let mut records = Vec::new();
    for i in 0..3 {
        let d = decide(&conf, &records, &state, &flags(flag("a", 1), flag("b", 1)), 0);
        assert_eq!(d.action, Action::Normal, "boot {i}");
        state = d.state;
        records.push(rec(&format!("boot{i}"), "a", Event::BootStarted));
    }
    let d = decide(&conf, &records, &state, &flags(flag("a", 1), flag("b", 1)), 0);
    assert_eq!((d.slot.as_str(), d.action), ("b", Action::Bailout));
    assert!(d.reason.contains("did not complete a healthy cycle in 3 boot(s)"), "{}", d.reason);

    conf.health.on_failure = OnFailure::Repair;
    let d = decide(&conf, &records, &state, &flags(flag("a", 1), flag("b", 7)), 5);
    assert_eq!((d.slot.as_str(), d.action), ("a", Action::Repair));
    assert_eq!(d.repair.as_ref().unwrap().source, "b");
    assert_eq!(d.state.repair, d.repair);
    assert_eq!(
        d.write_flags["a"],
        BootFlag { slot: "a".into(), image_version: "v1".into(), healthy_cycles: 0, last_good: 0 }
    );
}

#[test]
fn corrupt_flag_acts_at_once_and_says_why() {
    let conf = BootConf::default();
    let forged = FlagState::Forged { why: "its MAC does not verify".into() };
    let d = decide(&conf, &[], &BootState::default(), &flags(forged, flag("b", 2)), 0);
    assert_eq!((d.slot.as_str(), d.action), ("b", Action::Bailout));
    assert_eq!(d.reason, "running on backup b: the flag of slot a is forged: its MAC does not verify");
    let d = decide(&conf, &[], &BootState::default(), &flags(FlagState::Missing, FlagState::Missing), 0);
    assert_eq!((d.slot.as_str(), d.action), ("a", Action::Normal));
    assert!(d.reason.contains("booting slot a as it is"), "{}", d.reason);
}

#[test]
fn dirty_counts_only_when_configured() {
    let mut conf = BootConf::default();
    conf.health.max_attempts = 1;
    let records = [rec("1", "a", Event::BootStarted), rec("1", "a", healthy())];
    let old = BootState { attempts: BTreeMap::from([("a".into(), 1)]), ..Default::default() };
    let d = decide(&conf, &records, &old, &flags(flag("a", 1), flag("b", 1)), 0);
    assert_eq!(d.last_boot.as_ref().unwrap().verdict, Verdict::Dirty);
    assert_eq!(d.action, Action::Normal);
    assert!(d.write_flags.is_empty(), "a dirty boot does not renew the flag");
    conf.health.dirty_is_failure = true;
    let d = decide(&conf, &records, &old, &flags(flag("a", 1), flag("b", 1)), 0);
    assert_eq!(d.action, Action::Bailout);
}

#[test]
fn an_interrupted_repair_is_redone() {
    let conf = BootConf::default();
    let marker = RepairMarker { target: "a".into(), source: "b".into(), started: 1 };
    let old = BootState { repair: Some(marker.clone()), ..Default::default() };
    let d = decide(&conf, &[], &old, &flags(FlagState::Missing, flag("b", 3)), 2);
    assert_eq!((d.slot.as_str(), d.action), ("a", Action::Repair));
    assert_eq!(d.repair, Some(marker));
    assert!(d.reason.contains("interrupted repair"));
}

fn trial(slot: &str, booted: bool) -> Option<Trial> {
    Some(Trial { slot: slot.into(), version: "v2".into(), booted })
}

#[test]
fn an_installed_version_boots_once_as_a_trial_and_goes_back_unless_committed() {
    let conf = BootConf::default();
    let records = [rec("1", "a", Event::BootStarted), rec("1", "a", healthy()), rec("1", "a", Event::CleanShutdown)];
    let old = BootState { trial: trial("b", false), ..Default::default() };
    let d = decide(&conf, &records, &old, &flags(flag("a", 3), flag("b", 0)), 9);
    assert_eq!((d.slot.as_str(), d.action), ("b", Action::Trial));
    assert_eq!(d.state.trial, trial("b", true), "the trial is marked started before it boots");
    assert_eq!(d.state.attempts("b"), 1);

    // The trial boot went red (or lost power, or never reached gsed): back to a.
    for (tail, how) in [
        (
            vec![rec("2", "b", Event::BootStarted), rec("2", "b", Event::Red { reason: "x".into(), failures: vec![] })],
            "red",
        ),
        (vec![rec("2", "b", Event::BootStarted)], "incomplete"),
        (vec![], "never reached gsed"),
    ] {
        let mut all = records.to_vec();
        all.extend(tail);
        let r = decide(&conf, &all, &d.state, &flags(flag("a", 4), flag("b", 0)), 10);
        assert_eq!((r.slot.as_str(), r.action), ("a", Action::Rollback), "{how}");
        assert!(r.reason.contains("version v2 on slot b did not go green") && r.reason.contains(how), "{}", r.reason);
        assert_eq!(r.state.trial, None);
        assert_eq!(r.state.failed.as_ref().map(|f| f.version.as_str()), Some("v2"));
        // And the boot after that is a normal one on a.
        let n = decide(&conf, &all, &r.state, &flags(flag("a", 4), flag("b", 0)), 11);
        assert_eq!((n.slot.as_str(), n.action), ("a", Action::Normal));
    }
}

#[test]
fn a_committed_update_makes_the_new_slot_primary_and_the_old_one_its_backup() {
    let mut conf = BootConf::default();
    conf.health.max_attempts = 1;
    let old = BootState { primary: Some("b".into()), ..Default::default() };
    let d = decide(&conf, &[], &old, &flags(flag("a", 3), flag("b", 1)), 0);
    assert_eq!((d.slot.as_str(), d.action), ("b", Action::Normal));
    let d = decide(&conf, &[rec("1", "b", Event::BootStarted)], &d.state, &flags(flag("a", 3), flag("b", 1)), 0);
    assert_eq!((d.slot.as_str(), d.action), ("a", Action::Bailout), "{}", d.reason);
}

#[test]
fn a_trial_needs_a_sound_flag_on_its_slot() {
    let conf = BootConf::default();
    let old = BootState { trial: trial("b", false), ..Default::default() };
    let d = decide(&conf, &[], &old, &flags(flag("a", 3), FlagState::Missing), 0);
    assert_eq!((d.slot.as_str(), d.action), ("a", Action::Normal));
    assert_eq!(d.state.trial, None);
}
