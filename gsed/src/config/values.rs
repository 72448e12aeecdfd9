//! Small value types shared by several config files, each parsed from the string
//! an administrator writes and checked with a message that says what was expected.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Implements serde through `FromStr`/`Display`, so errors carry our message.
macro_rules! string_serde {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

/// A size in bytes: `"512M"`, `"20G"`, `"1T"`, `"4096"` (binary units; `MiB` is
/// accepted for `M`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a size: expected a number with K, M, G or T, like \"512M\" or \"20G\"");
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let shift = match unit.trim().trim_end_matches("iB").trim_end_matches('B') {
            "" => 0,
            "K" | "k" => 10,
            "M" => 20,
            "G" => 30,
            "T" => 40,
            _ => return Err(bad()),
        };
        n.checked_mul(1u64 << shift).map(Size).ok_or_else(bad)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}
string_serde!(Size);

/// A partition size: a [`Size`], or `"rest"` for the remaining space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartSize {
    Fixed(Size),
    Rest,
}

impl FromStr for PartSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "rest" => Ok(PartSize::Rest),
            other => other.parse().map(PartSize::Fixed).map_err(|e| format!("{e}, or \"rest\"")),
        }
    }
}

impl fmt::Display for PartSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartSize::Fixed(s) => s.fmt(f),
            PartSize::Rest => f.write_str("rest"),
        }
    }
}
string_serde!(PartSize);

/// A tmpfs size: absolute, or a percentage of RAM (`"25%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmpfsSize {
    Bytes(Size),
    Percent(u8),
}

impl FromStr for TmpfsSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().strip_suffix('%') {
            Some(p) => match p.parse::<u8>() {
                Ok(n) if (1..=100).contains(&n) => Ok(TmpfsSize::Percent(n)),
                _ => Err(format!("'{s}' is not a percentage of memory: expected 1% to 100%")),
            },
            None => s.parse().map(TmpfsSize::Bytes).map_err(|e| format!("{e}, or a percentage like \"25%\"")),
        }
    }
}

impl fmt::Display for TmpfsSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TmpfsSize::Bytes(b) => b.fmt(f),
            TmpfsSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}
string_serde!(TmpfsSize);

/// A file mode in octal: `"0755"`, `"1777"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match u32::from_str_radix(s.trim(), 8) {
            Ok(m) if m <= 0o7777 && !s.trim().is_empty() => Ok(Mode(m)),
            _ => Err(format!("'{s}' is not a file mode: expected octal digits like \"0644\" or \"1777\"")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}
string_serde!(Mode);

/// An HTTP(S) base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url(pub String);

impl FromStr for Url {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("'{s}' is not a usable URL: {why}");
        let rest = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
            .ok_or_else(|| bad("expected http:// or https://"))?;
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if host.is_empty() || host.starts_with(':') {
            return Err(bad("it has no host"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("it contains spaces"));
        }
        if let Some((_, port)) = host.rsplit_once(':').filter(|_| !host.ends_with(']')) {
            port.parse::<u16>().map_err(|_| bad("the port is not a number from 1 to 65535"))?;
        }
        Ok(Url(s.to_owned()))
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_serde!(Url);

/// True for an absolute, normalised path without `..`.
pub fn clean_absolute(p: &str) -> bool {
    p.starts_with('/') && !p.split('/').any(|c| c == ".." || c == ".") && !p.contains("//")
}

/// True when the path `p` is `dir` or lies below it, by whole components
/// (`/var/lib2` is not below `/var/lib`).
pub fn at_or_below(p: &str, dir: &str) -> bool {
    std::path::Path::new(p).starts_with(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_modes_urls() {
        assert_eq!("512M".parse::<Size>().unwrap().0, 512 << 20);
        assert_eq!("20GiB".parse::<Size>().unwrap().0, 20 << 30);
        assert_eq!("4096".parse::<Size>().unwrap().0, 4096);
        assert!("12X".parse::<Size>().is_err() && "-1G".parse::<Size>().is_err());
        assert_eq!(Size(20 << 30).to_string(), "20G");
        assert_eq!("25%".parse::<TmpfsSize>().unwrap(), TmpfsSize::Percent(25));
        assert!("0%".parse::<TmpfsSize>().is_err() && "101%".parse::<TmpfsSize>().is_err());
        assert_eq!("1777".parse::<Mode>().unwrap().0, 0o1777);
        assert!("0899".parse::<Mode>().is_err() && "17777".parse::<Mode>().is_err());
        assert!("http://198.51.100.7:8080/gse".parse::<Url>().is_ok());
        assert!("https://gse.lab.example/".parse::<Url>().is_ok());
        for bad in ["ftp://x", "http://", "http://:80/", "http://x:99999/", "http://a b/"] {
            assert!(bad.parse::<Url>().is_err(), "{bad}");
        }
        assert!(clean_absolute("/etc/motd") && !clean_absolute("/etc/../shadow") && !clean_absolute("etc"));
    }
}
