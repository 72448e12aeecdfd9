use std::{fmt, str::FromStr};

use zbus::{Connection, connection};

/// Which bus a program talks to: the value of `--bus` (DESIGN §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusAddress {
    System,
    Session,
    /// A D-Bus address such as `unix:path=/run/gse/test.sock`.
    Address(String),
}

impl FromStr for BusAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "system" => Ok(BusAddress::System),
            "session" => Ok(BusAddress::Session),
            a if a.contains(':') && a.contains('=') => Ok(BusAddress::Address(a.to_owned())),
            other => Err(format!(
                "'{other}' is not a bus: use system, session or a D-Bus address such as unix:path=/run/gse/early.sock"
            )),
        }
    }
}

impl fmt::Display for BusAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusAddress::System => f.write_str("the system bus"),
            BusAddress::Session => f.write_str("the session bus"),
            BusAddress::Address(a) => write!(f, "the bus at {a}"),
        }
    }
}

impl BusAddress {
    /// A builder for a connection to this bus, so callers can add names and objects.
    pub fn builder(&self) -> connection::Builder<'static> {
        match self {
            BusAddress::System => connection::Builder::system(),
            BusAddress::Session => connection::Builder::session(),
            BusAddress::Address(a) => connection::Builder::address(a.as_str()),
        }
    }

    /// Connects to a peer (no bus daemon), as `gsectl boot` does to `gsed --early`.
    /// Only `unix:path=` addresses name a peer.
    pub async fn connect_peer(&self) -> zbus::Result<Connection> {
        let path = match self {
            BusAddress::Address(a) => a.strip_prefix("unix:path=").map(|p| p.split(',').next().unwrap_or(p)),
            _ => None,
        }
        .ok_or_else(|| zbus::Error::Address(format!("{self} is not a peer socket (unix:path=...)")))?;
        let stream = std::os::unix::net::UnixStream::connect(path)?;
        connection::Builder::unix_stream(stream).p2p().build().await
    }

    /// Connects as a plain client.
    pub async fn connect(&self) -> zbus::Result<Connection> {
        self.builder().build().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!("system".parse::<BusAddress>(), Ok(BusAddress::System));
        assert_eq!("session".parse::<BusAddress>(), Ok(BusAddress::Session));
        assert_eq!(
            "unix:path=/run/gse/early.sock".parse::<BusAddress>(),
            Ok(BusAddress::Address("unix:path=/run/gse/early.sock".into()))
        );
        let err = "sytem".parse::<BusAddress>().unwrap_err();
        assert!(err.contains("'sytem'"), "{err}");
    }
}
