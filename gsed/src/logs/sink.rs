//! Where gsed's own log lines go besides stderr or journald: into the running
//! boot's spool (always, so they reach the archive) and to syslog when a syslog
//! daemon listens on /dev/log (the usual OpenRC setup).

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Lines logged before the spool is known are kept, up to this much.
const PENDING_MAX: usize = 256 << 10;

enum Spool {
    Pending(Vec<u8>),
    Attached(File),
    Off,
}

static SPOOL: Mutex<Spool> = Mutex::new(Spool::Pending(Vec::new()));

fn spool() -> std::sync::MutexGuard<'static, Spool> {
    SPOOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends every later line (and those logged so far) to `path`, appending.
pub fn attach(path: &Path) -> io::Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    let mut s = spool();
    if let Spool::Pending(buf) = &*s {
        f.write_all(buf)?;
    }
    *s = Spool::Attached(f);
    Ok(())
}

/// Stops writing to the spool (it is about to be archived) and drops what waits.
pub fn detach() {
    *spool() = Spool::Off;
}

/// Makes what was written so far survive a power cut.
pub fn sync() -> io::Result<()> {
    match &*spool() {
        Spool::Attached(f) => f.sync_data(),
        _ => Ok(()),
    }
}

/// A tracing writer into the spool.
pub struct SpoolWriter;

impl Write for SpoolWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *spool() {
            Spool::Attached(f) => f.write_all(buf)?,
            Spool::Pending(p) if p.len() + buf.len() <= PENDING_MAX => p.extend_from_slice(buf),
            _ => {}
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends each line as one datagram to a syslog socket, with the severity of its level.
pub struct Syslog {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Syslog {
    /// `None` when nothing listens at `path`.
    pub fn connect(path: &Path) -> Option<Syslog> {
        let socket = UnixDatagram::unbound().ok()?;
        socket.connect(path).ok()?;
        // A syslog daemon that does not keep up must never stall gsed: a full
        // queue drops the line (the spool still has it).
        socket.set_nonblocking(true).ok()?;
        Some(Syslog { socket, path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

static SYSLOG: OnceLock<Syslog> = OnceLock::new();

pub struct SyslogLine {
    severity: u8,
    buf: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let Some(s) = SYSLOG.get() else { return };
        let text = String::from_utf8_lossy(&self.buf);
        // facility daemon (3)
        let msg = format!("<{}>gsed[{}]: {}", 3 * 8 + self.severity, std::process::id(), text.trim_end());
        // A syslog daemon that went away loses the line; the spool still has it.
        let _ = s.socket.send(msg.as_bytes());
    }
}

/// The tracing writer for syslog; install [`Syslog`] first with [`use_syslog`].
pub struct SyslogWriter;

impl<'a> MakeWriter<'a> for SyslogWriter {
    type Writer = SyslogLine;
    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine { severity: 6, buf: Vec::new() }
    }
    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> SyslogLine {
        let severity = match *meta.level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        SyslogLine { severity, buf: Vec::new() }
    }
}

pub fn use_syslog(s: Syslog) {
    let _ = SYSLOG.set(s);
}
