//! `system/etc.conf` (+ `controller/cetc.conf`): what early boot writes into the
//! client's RAM-backed /etc; `sources/sources.conf`: where the image builder takes
//! packages from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    layer::{Invalid, Validate},
    values::{Mode, Url, clean_absolute},
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcConf {
    /// Written to /etc/hostname; empty keeps the image's.
    pub hostname: String,
    /// A zone name under /usr/share/zoneinfo; empty keeps the image's.
    pub timezone: String,
    /// Files to create or replace, by absolute path under /etc.
    pub file: BTreeMap<String, EtcFile>,
    /// Files of the image to remove from /etc (absolute paths under /etc).
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcFile {
    pub content: String,
    #[serde(default = "mode_644")]
    pub mode: Mode,
}

fn mode_644() -> Mode {
    Mode(0o644)
}

fn under_etc(p: &str) -> bool {
    clean_absolute(p) && p.starts_with("/etc/") && p.len() > 5
}

impl Validate for EtcConf {
    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        if !self.hostname.is_empty()
            && (self.hostname.len() > 63 || !self.hostname.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            out.push(Invalid::new(
                "hostname",
                format!("'{}' is not a host name (letters, digits and -, at most 63)", self.hostname),
            ));
        }
        if !self.timezone.is_empty() && (self.timezone.contains("..") || self.timezone.starts_with('/')) {
            out.push(Invalid::new(
                "timezone",
                format!("'{}' must be a zone name such as \"Europe/Berlin\"", self.timezone),
            ));
        }
        for p in self.file.keys() {
            if !under_etc(p) {
                out.push(Invalid::new(
                    format!("file.\"{p}\""),
                    "must be an absolute path under /etc without ..".into(),
                ));
            }
        }
        for p in &self.remove {
            if !under_etc(p) {
                out.push(Invalid::new("remove", format!("'{p}' must be an absolute path under /etc without ..")));
            }
            if self.file.contains_key(p) {
                out.push(Invalid::new("remove", format!("'{p}' is both written by [file] and removed")));
            }
        }
        out
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourcesConf {
    /// Distfile mirrors, tried in order (GENTOO_MIRRORS).
    pub mirrors: Vec<Url>,
    /// Where the Portage tree is synced from; empty keeps the builder's default.
    pub sync_uri: String,
    /// A binary package host (PORTAGE_BINHOST); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binhost: Option<Url>,
}

impl Validate for SourcesConf {
    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        if !self.sync_uri.is_empty()
            && !["rsync://", "http://", "https://", "git+https://"].iter().any(|p| self.sync_uri.starts_with(p))
        {
            out.push(Invalid::new(
                "sync_uri",
                format!("'{}' must start with rsync://, http://, https:// or git+https://", self.sync_uri),
            ));
        }
        out
    }
}
