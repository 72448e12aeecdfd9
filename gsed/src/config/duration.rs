//! Durations written the way people write them in config files: `"30s"`, `"5m"`.

use std::{fmt, str::FromStr, time};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub time::Duration);

impl Duration {
    pub const fn secs(s: u64) -> Self {
        Duration(time::Duration::from_secs(s))
    }
    pub fn get(self) -> time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let bad = || {
            format!("'{s}' is not a duration: expected a number and a unit, like \"500ms\", \"30s\", \"5m\" or \"1h\"")
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        let ms = match unit.trim() {
            "ms" => Some(n),
            "s" => n.checked_mul(1000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            _ => return Err(bad()),
        }
        .ok_or_else(bad)?;
        Ok(Duration(time::Duration::from_millis(ms)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            m if m % 3_600_000 == 0 && m > 0 => write!(f, "{}h", m / 3_600_000),
            m if m % 60_000 == 0 && m > 0 => write!(f, "{}m", m / 60_000),
            m if m % 1000 == 0 => write!(f, "{}s", m / 1000),
            m => write!(f, "{m}ms"),
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_rejects_nonsense() {
        assert_eq!("500ms".parse::<Duration>().unwrap().0, time::Duration::from_millis(500));
        assert_eq!("30s".parse::<Duration>().unwrap(), Duration::secs(30));
        assert_eq!("5m".parse::<Duration>().unwrap(), Duration::secs(300));
        assert_eq!("2h".parse::<Duration>().unwrap(), Duration::secs(7200));
        for bad in ["", "s", "30", "30 sec", "-1s", "1.5s", "99999999999999999999h"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} should fail");
        }
        assert_eq!(Duration::secs(300).to_string(), "5m");
        assert_eq!("1500ms".parse::<Duration>().unwrap().to_string(), "1500ms");
    }
}
