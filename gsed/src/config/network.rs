//! `system/network.conf` (+ `controller/cnetwork.conf`): the wired network.
//! An empty or absent file means DHCPv4 on every physical wired interface with
//! carrier (on a real client only; DESIGN §7).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use serde::{Deserialize, Serialize};

use super::{
    Duration,
    layer::{Invalid, Validate},
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConf {
    /// false: another network manager owns the interfaces; gsed only reports.
    pub manage: bool,
    /// How long early boot waits for an address before going on offline.
    pub wait: Duration,
    /// Sent to the DHCP server; empty means the kernel's hostname.
    pub hostname: String,
    pub interface: BTreeMap<String, InterfaceConf>,
}

impl Default for NetworkConf {
    fn default() -> Self {
        NetworkConf { manage: true, wait: Duration::secs(30), hostname: String::new(), interface: BTreeMap::new() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Dhcp,
    Static,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConf {
    pub method: Method,
    /// Static only: the address with its prefix, like "192.0.2.10/24".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// Parses "a.b.c.d/len" into the address and prefix length.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, len) =
        s.split_once('/').ok_or_else(|| format!("'{s}' has no prefix length: expected CIDR like \"192.0.2.10/24\""))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| format!("'{addr}' is not an IPv4 address"))?;
    let len: u8 = len.parse().map_err(|_| format!("prefix length '{len}' is not a number"))?;
    if !(1..=32).contains(&len) {
        return Err(format!("prefix length {len} is out of range: expected 1 to 32"));
    }
    Ok((addr, len))
}

fn valid_ifname(n: &str) -> bool {
    !n.is_empty() && n.len() <= 15 && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl Validate for NetworkConf {
    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        if self.wait.get() > std::time::Duration::from_secs(600) {
            out.push(Invalid::new("wait", format!("{} is too long: at most 10m", self.wait)));
        }
        if !self.hostname.is_empty()
            && !self.hostname.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            out.push(Invalid::new("hostname", format!("'{}' is not a valid host name", self.hostname)));
        }
        for (name, i) in &self.interface {
            let key = |f: &str| format!("interface.{name}.{f}");
            if !valid_ifname(name) {
                out.push(Invalid::new(
                    format!("interface.{name}"),
                    format!("'{name}' is not an interface name (1 to 15 letters, digits, - _ .)"),
                ));
            }
            match i.method {
                Method::Static => match &i.address {
                    None => out.push(Invalid::new(key("address"), "method = \"static\" needs an address".into())),
                    Some(a) => {
                        if let Err(e) = parse_cidr(a) {
                            out.push(Invalid::new(key("address"), e));
                        }
                    }
                },
                Method::Dhcp => {
                    for (f, set) in
                        [("address", i.address.is_some()), ("gateway", i.gateway.is_some()), ("dns", !i.dns.is_empty())]
                    {
                        if set {
                            out.push(Invalid::new(
                                key(f),
                                "only applies to method = \"static\"; DHCP supplies it".into(),
                            ));
                        }
                    }
                }
            }
            if let Some(g) = &i.gateway
                && g.parse::<Ipv4Addr>().is_err()
            {
                out.push(Invalid::new(key("gateway"), format!("'{g}' is not an IPv4 address")));
            }
            for d in &i.dns {
                if d.parse::<IpAddr>().is_err() {
                    out.push(Invalid::new(key("dns"), format!("'{d}' is not an IP address")));
                }
            }
            if let Some(mtu) = i.mtu
                && !(576..=9216).contains(&mtu)
            {
                out.push(Invalid::new(key("mtu"), format!("{mtu} is out of range: expected 576 to 9216")));
            }
        }
        out
    }
}
