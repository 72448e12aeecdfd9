//! Health check programs: discovered in a directory, run with a timeout each, and
//! judged by exit status. A check that hangs is killed with its whole process group.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use gse_dbus::health::{CheckKind, CheckState};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{io::AsyncReadExt, process::Command};

/// How much of a failed check's output the report keeps.
const TAIL_LINES: usize = 20;
const TAIL_BYTES: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    pub name: String,
    pub path: PathBuf,
    pub kind: CheckKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRun {
    pub state: CheckState,
    pub detail: String,
    pub output: String,
    pub duration: Duration,
}

/// The executables in `dir`, sorted by name. Hidden files and editor backups are
/// ignored; a missing directory simply has no checks.
pub fn discover(dir: &Path, kind: CheckKind) -> Vec<CheckSpec> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut specs: Vec<CheckSpec> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if name.starts_with('.') || name.ends_with('~') {
                return None;
            }
            let meta = std::fs::metadata(e.path()).ok()?;
            (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then(|| CheckSpec { name, path: e.path(), kind })
        })
        .collect();
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    specs
}

/// Runs one check to completion or until `timeout`, whichever comes first.
pub async fn run(spec: &CheckSpec, timeout: Duration) -> CheckRun {
    let started = Instant::now();
    let mut child = match Command::new(&spec.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return CheckRun {
                state: CheckState::Failed,
                detail: format!("cannot run {}: {e}", spec.path.display()),
                output: String::new(),
                duration: started.elapsed(),
            };
        }
    };
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    // One buffer for both streams, in the order the lines arrived.
    let output = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        child.stdout.take().map(|s| tokio::spawn(collect(s, output.clone()))),
        child.stderr.take().map(|s| tokio::spawn(collect(s, output.clone()))),
    ];

    let waited = tokio::time::timeout(timeout, child.wait()).await;
    // Whatever it left behind goes with it; a check must not leave processes running.
    if let Some(pgid) = pgid {
        let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
    }
    for r in readers.into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_millis(500), r).await;
    }
    let duration = started.elapsed();
    let output = tail(&output.lock().unwrap_or_else(|e| e.into_inner()));

    let (state, detail) = match waited {
        Err(_) => {
            let _ = child.wait().await;
            (CheckState::TimedOut, format!("timed out after {:.0?} and was killed", timeout))
        }
        Ok(Err(e)) => (CheckState::Failed, format!("could not be waited for: {e}")),
        Ok(Ok(status)) if status.success() => (CheckState::Passed, String::new()),
        Ok(Ok(status)) => {
            use std::os::unix::process::ExitStatusExt;
            let why = match (status.code(), status.signal()) {
                (Some(code), _) => format!("exited with status {code}"),
                (None, Some(sig)) => format!("was killed by signal {sig}"),
                _ => "failed".into(),
            };
            (CheckState::Failed, why)
        }
    };
    let output = if state == CheckState::Passed { String::new() } else { output };
    CheckRun { state, detail, output, duration }
}

async fn collect(mut stream: impl tokio::io::AsyncRead + Unpin, into: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let mut out = into.lock().unwrap_or_else(|e| e.into_inner());
        out.extend_from_slice(&buf[..n]);
        // Keep memory bounded for a chatty check; only the tail is reported.
        if out.len() > 4 * TAIL_BYTES {
            let cut = out.len() - 2 * TAIL_BYTES;
            out.drain(..cut);
        }
    }
}

/// The last lines of the output, trimmed to a size a report can carry.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let mut t = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    if t.len() > TAIL_BYTES {
        let mut cut = t.len() - TAIL_BYTES;
        while !t.is_char_boundary(cut) {
            cut += 1;
        }
        t = format!("…{}", &t[cut..]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn discover_finds_executables_only() {
        let d = tempfile::tempdir().unwrap();
        script(d.path(), "20-b", "true");
        script(d.path(), "10-a", "true");
        script(d.path(), ".hidden", "true");
        script(d.path(), "old~", "true");
        fs::write(d.path().join("README"), "not a check").unwrap();
        let names: Vec<_> = discover(d.path(), CheckKind::Required).into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["10-a", "20-b"]);
        assert!(discover(&d.path().join("missing"), CheckKind::Wanted).is_empty());
    }

    #[tokio::test]
    async fn outcomes_pass_fail_and_timeout() {
        let d = tempfile::tempdir().unwrap();
        let spec = |name: &str, body: &str| CheckSpec {
            name: name.into(),
            path: script(d.path(), name, body),
            kind: CheckKind::Required,
        };
        let ok = run(&spec("ok", "echo fine"), Duration::from_secs(5)).await;
        assert_eq!(ok.state, CheckState::Passed);

        let bad = run(&spec("bad", "echo line1; echo disk full >&2; exit 3"), Duration::from_secs(5)).await;
        assert_eq!(bad.state, CheckState::Failed);
        assert_eq!(bad.detail, "exited with status 3");
        assert!(bad.output.contains("line1") && bad.output.contains("disk full"), "{:?}", bad.output);

        // The sleeping grandchild is in the same group and must die with it.
        let t0 = Instant::now();
        let hang = run(&spec("hang", "echo waiting; sleep 60 & wait"), Duration::from_millis(300)).await;
        assert_eq!(hang.state, CheckState::TimedOut);
        assert!(hang.output.contains("waiting"));
        assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    }

    #[test]
    fn tail_keeps_the_end() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = tail(text.as_bytes());
        assert!(t.starts_with("line 80") && t.ends_with("line 99"), "{t}");
    }
}
