//! Logging through tracing: to journald when its socket exists, else to syslog when
//! a syslog daemon listens, else to stderr — and always into the running boot's
//! log spool, so gsed's own lines reach the archive (DESIGN §13).
//! `GSE_LOG` (or `RUST_LOG`) sets the filter as `LEVEL` or `target=LEVEL,…`;
//! the default is `info`. (Plain directives, no regular expressions: the regex
//! engine cost the daemon and the initramfs a megabyte.)

use std::{io::IsTerminal, path::Path};

use tracing_subscriber::{Layer, filter::Targets, layer::SubscriberExt, util::SubscriberInitExt};

use crate::logs::sink::{SpoolWriter, Syslog, SyslogWriter, use_syslog};

/// `syslog`: the socket to try (None in early boot, where none runs); `spool`:
/// whether lines are kept for the boot's log spool.
pub fn init(syslog: Option<&Path>, spool: bool) {
    let filter = || filter(std::env::var("GSE_LOG").or_else(|_| std::env::var("RUST_LOG")).ok().as_deref());
    let journald = Path::new("/run/systemd/journal/socket").exists().then(tracing_journald::layer).and_then(Result::ok);
    let syslog = if journald.is_none() { syslog.and_then(Syslog::connect) } else { None };
    let main = match (journald, syslog) {
        (Some(j), _) => j.with_filter(filter()).boxed(),
        (None, Some(s)) => {
            use_syslog(s);
            tracing_subscriber::fmt::layer()
                .with_writer(SyslogWriter)
                .with_ansi(false)
                .without_time()
                .with_level(false)
                .with_filter(filter())
                .boxed()
        }
        (None, None) => {
            // Colour only on a terminal: OpenRC sends stderr to /var/log/gsed.log.
            let ansi = std::io::stderr().is_terminal();
            tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).with_filter(filter()).boxed()
        }
    };
    let spool = spool
        .then(|| tracing_subscriber::fmt::layer().with_writer(|| SpoolWriter).with_ansi(false).with_filter(filter()));
    tracing_subscriber::registry().with(main).with(spool).init();
}

/// A list for one log line: its length and the first few items, so a sync of
/// thousands of files logs one short line, not a hundred kilobytes.
pub fn brief<T: std::fmt::Display>(items: &[T]) -> String {
    const SHOWN: usize = 8;
    let first: Vec<String> = items.iter().take(SHOWN).map(|i| i.to_string()).collect();
    match items.len() {
        n if n <= SHOWN => format!("{n}: {}", first.join(", ")),
        n => format!("{n}: {}, … (+{} more)", first.join(", "), n - SHOWN),
    }
}

/// The filter from `GSE_LOG`/`RUST_LOG`; one that does not parse is reported
/// and the default used.
fn filter(directives: Option<&str>) -> Targets {
    const DEFAULT: &str = "info,netlink_packet_route=error";
    match directives.map(str::parse::<Targets>) {
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            eprintln!("gsed: GSE_LOG/RUST_LOG: {e}; using {DEFAULT}");
            DEFAULT.parse().unwrap_or_default()
        }
        None => DEFAULT.parse().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn brief_lists_stay_short() {
        assert_eq!(super::brief(&["a", "b"]), "2: a, b");
        let many: Vec<String> = (0..2000).map(|i| format!("system/file{i}.conf")).collect();
        let line = super::brief(&many);
        assert!(
            line.starts_with("2000: system/file0.conf,") && line.ends_with("(+1992 more)") && line.len() < 300,
            "{line}"
        );
    }

    #[test]
    fn filters_parse_levels_and_targets() {
        use tracing::Level;
        let f = super::filter(Some("warn,gsed::network=debug"));
        assert!(f.would_enable("gsed::network::dhcp", &Level::DEBUG));
        assert!(!f.would_enable("gsed::health", &Level::INFO));
        let d = super::filter(None);
        assert!(d.would_enable("gsed", &Level::INFO) && !d.would_enable("gsed", &Level::DEBUG));
        assert!(!d.would_enable("netlink_packet_route::link", &Level::WARN));
        // A bad value falls back to the default rather than silencing gsed.
        assert!(super::filter(Some("gsed=loud")).would_enable("gsed", &Level::INFO));
    }
}
