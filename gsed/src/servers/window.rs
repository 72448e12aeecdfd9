//! `reboot = "window"` (DESIGN §11): an installed version waits for the next
//! boot, unless the machine is idle inside the configured window, in which
//! case gsed reboots it. Idle means nobody is logged in (utmp): a student's
//! session is never cut.

use std::{path::Path, sync::Arc, time::Duration};

use gse_dbus::servers::UpdateState;
use tracing::{debug, info, warn};

use super::UpdateService;
use crate::{
    config::{Reboot, live::ConfigService},
    paths::Paths,
};

/// A daily window in minutes after local midnight; `start > end` wraps past midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    start: u16,
    end: u16,
}

impl Window {
    /// `HH:MM-HH:MM`.
    pub fn parse(s: &str) -> Result<Window, String> {
        let bad = || format!("'{s}' is not a window: expected HH:MM-HH:MM, like \"02:00-05:00\"");
        let minute = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 && t.trim().len() == 5).then_some(h * 60 + m)
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (start, end) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
        if start == end {
            return Err(format!("'{s}' is an empty window"));
        }
        Ok(Window { start, end })
    }

    pub fn contains(&self, minute: u16) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

/// Minutes after local midnight at `secs` since the epoch (the machine's time zone).
pub fn local_minute(secs: u64) -> u16 {
    let t = secs as libc::time_t;
    // SAFETY: `tm` is plain data, for which all-zero bytes are a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers refer to live locals for the whole call; localtime_r
    // writes only into `tm` and is thread-safe.
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok { (tm.tm_hour * 60 + tm.tm_min) as u16 } else { ((secs % 86_400) / 60) as u16 }
}

/// Users with a live login in utmp (`USER_PROCESS` records whose process runs).
pub fn logged_in(utmp: &Path) -> Vec<String> {
    // glibc's x86_64 `struct utmp`: 384 bytes; type i16 at 0, pid i32 at 4, user at 44..76.
    const SIZE: usize = 384;
    const USER_PROCESS: i16 = 7;
    let data = std::fs::read(utmp).unwrap_or_default();
    data.chunks_exact(SIZE)
        .filter(|r| i16::from_ne_bytes([r[0], r[1]]) == USER_PROCESS)
        .filter(|r| {
            let pid = i32::from_ne_bytes([r[4], r[5], r[6], r[7]]);
            pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        })
        .map(|r| String::from_utf8_lossy(&r[44..76]).trim_end_matches('\0').to_owned())
        .collect()
}

/// Watches for an installed version under `reboot = "window"`, and reboots an
/// idle machine inside the window.
pub async fn run(update: Arc<UpdateService>, config: Arc<ConfigService>, paths: Paths) {
    let (mut states, mut cfg) = (update.subscribe(), config.subscribe());
    loop {
        let conf = config.current().loaded.settings.update.clone();
        let waiting = states.borrow_and_update().state == UpdateState::Installed && conf.reboot == Reboot::Window;
        if waiting && let Some(w) = conf.window.as_deref().and_then(|w| Window::parse(w).ok()) {
            let users = logged_in(&paths.utmp());
            let minute = local_minute(crate::journal::now());
            if w.contains(minute) && users.is_empty() {
                let detail = update.snapshot().detail;
                info!(%detail, "idle inside the update window: rebooting to start the new version");
                match tokio::process::Command::new(paths.reboot_command()).status().await {
                    Ok(s) if s.success() => return,
                    Ok(s) => warn!(status = %s, "reboot failed; trying again later"),
                    Err(e) => warn!(error = %e, "cannot run reboot; trying again later"),
                }
            } else {
                debug!(?users, minute, "not rebooting for the update: outside the window or in use");
            }
        }
        let recheck = async {
            if waiting { tokio::time::sleep(Duration::from_secs(10)).await } else { std::future::pending().await }
        };
        tokio::select! {
            () = recheck => {}
            r = states.changed() => if r.is_err() { return },
            r = cfg.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_wrap_past_midnight() {
        let w = Window::parse("02:00-05:30").unwrap();
        assert!(w.contains(120) && w.contains(329) && !w.contains(330) && !w.contains(60));
        let night = Window::parse("22:00-06:00").unwrap();
        assert!(night.contains(23 * 60) && night.contains(0) && night.contains(359) && !night.contains(360));
        for bad in ["2:00-05:00", "02:00", "25:00-01:00", "02:00-02:00", "aa:bb-cc:dd"] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_live_user_processes_count_as_logged_in() {
        let dir = tempfile::tempdir().unwrap();
        let record = |kind: i16, pid: i32, user: &str| {
            let mut r = vec![0u8; 384];
            r[0..2].copy_from_slice(&kind.to_ne_bytes());
            r[4..8].copy_from_slice(&pid.to_ne_bytes());
            r[44..44 + user.len()].copy_from_slice(user.as_bytes());
            r
        };
        let me = std::process::id() as i32;
        let data = [record(7, me, "student"), record(8, me, "gone"), record(7, i32::MAX - 1, "stale")].concat();
        let utmp = dir.path().join("utmp");
        std::fs::write(&utmp, data).unwrap();
        assert_eq!(logged_in(&utmp), vec!["student".to_owned()]);
        assert!(logged_in(&dir.path().join("none")).is_empty());
    }
}
