//! Logging through tracing: to journald when its socket exists, else to stderr.
//! `RUST_LOG` (or `GSE_LOG`) sets the filter; the default is `info`.

use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

pub fn init() {
    let filter = || {
        EnvFilter::try_from_env("GSE_LOG")
            .or_else(|_| EnvFilter::try_from_default_env())
            .unwrap_or_else(|_| EnvFilter::new("info,netlink_packet_route=error"))
    };
    let journald =
        std::path::Path::new("/run/systemd/journal/socket").exists().then(tracing_journald::layer).and_then(Result::ok);
    let registry = tracing_subscriber::registry();
    match journald {
        Some(layer) => registry.with(layer.with_filter(filter())).init(),
        None => {
            registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter())).init()
        }
    }
}
