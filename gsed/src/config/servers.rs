//! `controller/server/server.info.conf` (the servers and the key that signs what
//! they publish) and `controller/update.chk.conf` (whether and how to update).

use serde::{Deserialize, Serialize};

use super::{
    Duration,
    layer::{Invalid, Validate},
    values::Url,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerInfoConf {
    /// The minisign public key (the base64 line of a `.pub` file) that signs every
    /// MANIFEST and channel file. Required as soon as a server is listed.
    pub public_key: String,
    /// How often each server is probed.
    pub probe_interval: Duration,
    /// How long a probe may take before it counts as failed.
    pub probe_timeout: Duration,
    /// Failed probes in a row after which the current server is left.
    pub fail_after: u32,
    /// How much better (fraction of score) another server must be before moving.
    pub switch_margin: f64,
    /// Random delay up to this long before a voluntary move, so a room does not move at once.
    pub jitter: Duration,
    /// How often config.d is synced from the current server.
    pub sync_interval: Duration,
    /// How long early boot may spend choosing a server and syncing config.d;
    /// past it the boot goes on with the cached config.d.
    pub boot_deadline: Duration,
    pub server: Vec<Server>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub name: String,
    /// Base URL above `gse1/`.
    pub url: Url,
}

impl Default for ServerInfoConf {
    fn default() -> Self {
        ServerInfoConf {
            public_key: String::new(),
            probe_interval: Duration::secs(30),
            probe_timeout: Duration::secs(5),
            fail_after: 3,
            switch_margin: 0.3,
            jitter: Duration::secs(600),
            sync_interval: Duration::secs(900),
            boot_deadline: Duration::secs(30),
            server: Vec::new(),
        }
    }
}

/// A minisign public key is base64 of 42 bytes: "Ed", an 8-byte key id, 32 key bytes.
fn looks_like_minisign_key(k: &str) -> bool {
    k.len() == 56
        && k.starts_with("RW")
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '=')
}

impl Validate for ServerInfoConf {
    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        if !self.public_key.is_empty() && !looks_like_minisign_key(&self.public_key) {
            out.push(Invalid::new(
                "public_key",
                "is not a minisign public key (56 base64 characters starting with RW)".into(),
            ));
        }
        if !self.server.is_empty() && self.public_key.is_empty() {
            out.push(Invalid::new(
                "public_key",
                "is required when servers are listed: clients verify everything they fetch".into(),
            ));
        }
        let mut names = Vec::new();
        for (i, s) in self.server.iter().enumerate() {
            if s.name.is_empty() || !s.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                out.push(Invalid::new(
                    format!("server.{i}.name"),
                    format!("'{}' must be a short name of letters, digits, - _ .", s.name),
                ));
            }
            if s.url.0.starts_with("https://") {
                out.push(Invalid::new(
                    format!("server.{i}.url"),
                    format!(
                        "'{}': use http:// — gsed speaks plain HTTP; everything it fetches is signed and checked",
                        s.url
                    ),
                ));
            }
            if names.contains(&&s.name) {
                out.push(Invalid::new(format!("server.{i}.name"), format!("'{}' is listed twice", s.name)));
            }
            names.push(&s.name);
        }
        if self.probe_timeout >= self.probe_interval {
            out.push(Invalid::new(
                "probe_timeout",
                format!("{} must be shorter than probe_interval {}", self.probe_timeout, self.probe_interval),
            ));
        }
        if self.probe_interval.get() < std::time::Duration::from_secs(1) {
            out.push(Invalid::new("probe_interval", "must be at least 1s".into()));
        }
        if !(1..=100).contains(&self.fail_after) {
            out.push(Invalid::new("fail_after", format!("{} is out of range: expected 1 to 100", self.fail_after)));
        }
        if !(0.0..=1.0).contains(&self.switch_margin) {
            out.push(Invalid::new(
                "switch_margin",
                format!("{} is out of range: expected 0.0 to 1.0", self.switch_margin),
            ));
        }
        if self.sync_interval.get() < std::time::Duration::from_secs(10) {
            out.push(Invalid::new("sync_interval", "must be at least 10s".into()));
        }
        if self.boot_deadline.get() < std::time::Duration::from_secs(1)
            || self.boot_deadline.get() > std::time::Duration::from_secs(600)
        {
            out.push(Invalid::new("boot_deadline", format!("{} is out of range: 1s to 10m", self.boot_deadline)));
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdatePolicy {
    /// Wait for `gsectl update approve` or `decline`.
    Ask,
    /// Take every new version.
    Auto,
    /// Only report new versions.
    Never,
}

/// When an installed version starts (DESIGN §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Reboot {
    /// Whenever the machine boots next.
    #[default]
    NextBoot,
    /// gsed reboots an idle machine (nobody logged in) inside `window`.
    Window,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateConf {
    pub channel: String,
    pub policy: UpdatePolicy,
    pub check_interval: Duration,
    /// Bytes per second an image download may use; none: no limit.
    pub max_rate: Option<super::values::Size>,
    pub reboot: Reboot,
    /// `HH:MM-HH:MM` local time, may wrap past midnight.
    pub window: Option<String>,
    /// With `policy = "ask"`: early boot asks on the console whether to install
    /// a new version right there.
    pub prompt_at_boot: bool,
}

impl Default for UpdateConf {
    fn default() -> Self {
        UpdateConf {
            channel: "stable".into(),
            policy: UpdatePolicy::Ask,
            check_interval: Duration::secs(3600),
            max_rate: None,
            reboot: Reboot::NextBoot,
            window: None,
            prompt_at_boot: false,
        }
    }
}

impl Validate for UpdateConf {
    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        if self.channel.is_empty()
            || !self.channel.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            out.push(Invalid::new("channel", format!("'{}' must be lowercase letters, digits and -", self.channel)));
        }
        if self.check_interval.get() < std::time::Duration::from_secs(60) {
            out.push(Invalid::new("check_interval", "must be at least 1m".into()));
        }
        match (&self.window, self.reboot) {
            (Some(w), _) => {
                if let Err(e) = crate::servers::window::Window::parse(w) {
                    out.push(Invalid::new("window", e));
                }
            }
            (None, Reboot::Window) => {
                out.push(Invalid::new("window", "reboot = \"window\" needs a window = \"HH:MM-HH:MM\"".into()))
            }
            (None, Reboot::NextBoot) => {}
        }
        if self.max_rate.is_some_and(|r| r.0 < 64 << 10) {
            out.push(Invalid::new("max_rate", "must be at least 64K (bytes per second)".into()));
        }
        out
    }
}
