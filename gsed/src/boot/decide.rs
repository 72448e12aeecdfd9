//! The slot decision of DESIGN §5, as a pure function of the configuration, the
//! health journal, early boot's state and the flags. Acting on it (writing flags,
//! repairing, mounting) is the caller's job, so every path is testable here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    flag::{BootFlag, FlagState},
    state::{BootState, Failed, RepairMarker, Trial},
};
pub use gse_dbus::boot::{Action, Verdict};

use crate::{
    config::{BootConf, OnFailure},
    health::verdict::judge,
    journal::{Event, Record},
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastBoot {
    pub boot_id: String,
    pub slot: String,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub slot: String,
    pub action: Action,
    pub reason: String,
    /// The previous boot, when it had not been judged before.
    pub last_boot: Option<LastBoot>,
    /// Flags to write before mounting, by slot.
    pub write_flags: BTreeMap<String, BootFlag>,
    /// Clone `source` over `target` before booting.
    pub repair: Option<RepairMarker>,
    /// The state to persist once the flags are written.
    pub state: BootState,
}

/// Judges the boot that started last, unless an earlier early boot already did:
/// a healthy cycle resets its slot's attempts and renews its flag; a dirty boot
/// resets them only when dirty boots are not failures.
fn take_last_boot(
    conf: &BootConf,
    records: &[Record],
    state: &mut BootState,
    flags: &BTreeMap<String, FlagState>,
    write_flags: &mut BTreeMap<String, BootFlag>,
    now: u64,
) -> Option<LastBoot> {
    let last = records.iter().rev().find(|r| r.event == Event::BootStarted)?;
    if state.judged.as_deref() == Some(last.boot_id.as_str()) {
        return None;
    }
    let lb =
        LastBoot { boot_id: last.boot_id.clone(), slot: last.slot.clone(), verdict: judge(records, &last.boot_id) };
    state.judged = Some(lb.boot_id.clone());
    match lb.verdict {
        Verdict::HealthyCycle => {
            state.attempts.insert(lb.slot.clone(), 0);
            if let Some(f) = flags.get(&lb.slot).and_then(FlagState::flag) {
                let renewed = BootFlag { healthy_cycles: f.healthy_cycles + 1, last_good: now, ..f.clone() };
                write_flags.insert(lb.slot.clone(), renewed);
            }
        }
        Verdict::Dirty if !conf.health.dirty_is_failure => {
            state.attempts.insert(lb.slot.clone(), 0);
        }
        // Already counted when that boot started.
        Verdict::Dirty | Verdict::Red | Verdict::Incomplete => {}
    }
    Some(lb)
}

/// The slot that is not `primary` (boot.conf validation guarantees one).
pub fn backup_of<'a>(conf: &'a BootConf, primary: &'a str) -> &'a str {
    conf.slots.keys().find(|s| **s != primary).map(String::as_str).unwrap_or(primary)
}

pub fn decide(
    conf: &BootConf,
    records: &[Record],
    old: &BootState,
    flags: &BTreeMap<String, FlagState>,
    now: u64,
) -> Decision {
    let primary = old.primary(conf).to_owned();
    let backup = backup_of(conf, &primary).to_owned();
    let mut state = old.clone();
    let mut write_flags = BTreeMap::new();
    let flag_of = |s: &str| flags.get(s).cloned().unwrap_or(FlagState::Missing);

    // 1. Take the previous boot into account, once.
    let last_boot = take_last_boot(conf, records, &mut state, flags, &mut write_flags, now);

    let mut decision = |slot: &str, action, reason: String, state: BootState, repair| Decision {
        slot: slot.to_owned(),
        action,
        reason,
        last_boot: last_boot.clone(),
        write_flags: std::mem::take(&mut write_flags),
        repair,
        state,
    };
    let count = |state: &mut BootState, slot: &str| *state.attempts.entry(slot.to_owned()).or_insert(0) += 1;
    let fresh_flag = |target: &str, source: &str| BootFlag {
        slot: target.to_owned(),
        image_version: flag_of(source).flag().map(|f| f.image_version.clone()).unwrap_or_default(),
        healthy_cycles: 0,
        last_good: 0,
    };

    // 2. An unfinished repair is finished first, as long as its source is sound.
    if let Some(m) = old.repair.clone() {
        if flag_of(&m.source).is_valid() {
            let reason = format!("finishing an interrupted repair of slot {} from slot {}", m.target, m.source);
            let mut d = decision(&m.target.clone(), Action::Repair, reason, state, Some(m.clone()));
            d.write_flags.insert(m.target.clone(), fresh_flag(&m.target, &m.source));
            d.state.attempts.insert(m.target.clone(), 1);
            d.state.repair = Some(m);
            return d;
        }
        state.repair = None; // its source went bad: fall through to the normal rules
    }

    // 3. A new version: its first boot is a trial; a trial that never went
    //    green (gsed commits it at green) is rolled back.
    if let Some(t) = old.trial.clone() {
        state.trial = None;
        if t.booted && flag_of(&primary).is_valid() {
            let how = match &last_boot {
                Some(lb) if lb.slot == t.slot => format!("its boot ended {}", lb.verdict),
                _ => "it never reached gsed".into(),
            };
            let reason = format!("version {} on slot {} did not go green in its trial ({how})", t.version, t.slot);
            state.failed = Some(Failed { version: t.version.clone(), reason: reason.clone() });
            count(&mut state, &primary);
            return decision(&primary, Action::Rollback, format!("back to slot {primary}: {reason}"), state, None);
        }
        if !t.booted && t.slot != primary && flag_of(&t.slot).is_valid() {
            state.trial = Some(Trial { booted: true, ..t.clone() });
            count(&mut state, &t.slot);
            let reason = format!(
                "trying version {} on slot {}; slot {primary} stays primary until it is green",
                t.version, t.slot
            );
            return decision(&t.slot, Action::Trial, reason, state, None);
        }
    }

    // 4. Is the primary trustworthy?
    let pflag = flag_of(&primary);
    let max = conf.health.max_attempts;
    let why_not = if !pflag.is_valid() {
        Some(format!("the flag of slot {primary} is {pflag}"))
    } else if state.attempts(&primary) >= max {
        Some(format!("slot {primary} did not complete a healthy cycle in {max} boot(s)"))
    } else {
        None
    };
    let Some(why_not) = why_not else {
        count(&mut state, &primary);
        return decision(&primary, Action::Normal, "the primary slot is healthy".into(), state, None);
    };

    // 5. The failure policy, when the backup can be trusted.
    if !flag_of(&backup).is_valid() {
        count(&mut state, &primary);
        let reason =
            format!("{why_not}, and the backup's flag is {}; booting slot {primary} as it is", flag_of(&backup));
        return decision(&primary, Action::Normal, reason, state, None);
    }
    match conf.health.on_failure {
        OnFailure::Bailout => {
            count(&mut state, &backup);
            let reason = format!("running on backup {backup}: {why_not}");
            decision(&backup, Action::Bailout, reason, state, None)
        }
        OnFailure::Repair => {
            let marker = RepairMarker { target: primary.clone(), source: backup.clone(), started: now };
            state.repair = Some(marker.clone());
            state.attempts.insert(primary.clone(), 1);
            let reason = format!("slot {primary} restored from backup {backup}: {why_not}");
            let mut d = decision(&primary, Action::Repair, reason, state, Some(marker));
            d.write_flags.insert(primary.clone(), fresh_flag(&primary, &backup));
            d
        }
    }
}

#[cfg(test)]
mod tests;
