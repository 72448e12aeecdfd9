//! `system/logs.conf` (+ `controller/clogs.conf`): the archive of every boot's logs
//! on the persistent area; `system/metrics.conf` (+ `controller/cmetrics.conf`):
//! the Prometheus textfile that gsed keeps current (DESIGN §13).

use serde::{Deserialize, Serialize};

use super::{
    Duration,
    layer::{Invalid, Validate},
    values::{Size, clean_absolute},
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogsConf {
    /// Archive the logs of every boot; `false` keeps nothing (and spools nothing).
    pub archive: bool,
    /// The whole archive stays under this size; the oldest normal boots go first.
    pub max_size: Size,
    /// At most this many boots are kept.
    pub max_boots: u32,
    /// What one boot may spool at most; beyond it, the spool notes the cut.
    pub max_boot_size: Size,
    /// How often live logs are copied to the persistent spool: what a power cut can lose.
    pub spool_interval: Duration,
    /// Directories whose regular files are collected (absolute, in the running system).
    pub sources: Vec<String>,
    /// Collect the kernel's messages (/dev/kmsg).
    pub kernel: bool,
}

impl Default for LogsConf {
    fn default() -> Self {
        LogsConf {
            archive: true,
            max_size: Size(256 << 20),
            max_boots: 100,
            max_boot_size: Size(32 << 20),
            spool_interval: Duration::secs(2),
            sources: vec!["/var/log".into()],
            kernel: true,
        }
    }
}

impl Validate for LogsConf {
    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        if self.max_boots == 0 {
            out.push(Invalid::new("max_boots", "must be at least 1 (set archive = false to keep nothing)".into()));
        }
        if self.max_size.0 < 1 << 20 {
            out.push(Invalid::new("max_size", format!("{} is too small: at least \"1M\"", self.max_size)));
        }
        if self.max_boot_size.0 < 64 << 10 {
            out.push(Invalid::new("max_boot_size", format!("{} is too small: at least \"64K\"", self.max_boot_size)));
        }
        let interval = self.spool_interval.get();
        if interval < std::time::Duration::from_millis(100) || interval > std::time::Duration::from_secs(300) {
            out.push(Invalid::new("spool_interval", format!("{} is out of range: 100ms to 5m", self.spool_interval)));
        }
        for s in &self.sources {
            if !clean_absolute(s) || s == "/" {
                out.push(Invalid::new("sources", format!("'{s}' must be an absolute directory without .., not /")));
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConf {
    /// Write the metrics file.
    pub enabled: bool,
    /// The file node_exporter's textfile collector reads (`--root` prefixes it).
    pub textfile: String,
}

impl Default for MetricsConf {
    fn default() -> Self {
        MetricsConf { enabled: true, textfile: "/var/lib/node_exporter/textfile_collector/gse.prom".into() }
    }
}

impl Validate for MetricsConf {
    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        if !clean_absolute(&self.textfile) || !self.textfile.ends_with(".prom") {
            out.push(Invalid::new(
                "textfile",
                format!(
                    "'{}' must be an absolute path without .. ending in .prom (node_exporter reads only those)",
                    self.textfile
                ),
            ));
        }
        out
    }
}
