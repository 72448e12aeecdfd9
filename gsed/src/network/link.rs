//! The wired network through rtnetlink: finding interfaces, their carrier,
//! bringing them up, and setting addresses, default routes and DNS. No shell-out.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use futures_util::TryStreamExt;
use netlink_packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkMessage},
    route::{RouteAddress, RouteAttribute},
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub up: bool,
    pub carrier: bool,
}

pub fn from_message(m: &LinkMessage) -> Option<Link> {
    let name =
        m.attributes.iter().find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None })?;
    let mac = m
        .attributes
        .iter()
        .find_map(|a| if let LinkAttribute::Address(b) = a { Some(b.clone()) } else { None })
        .unwrap_or_default();
    let carrier = m.header.flags.contains(LinkFlags::LowerUp)
        || m.attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::Carrier(1)) && m.header.flags.contains(LinkFlags::Up));
    Some(Link {
        index: m.header.index,
        name,
        mac,
        up: m.header.flags.contains(LinkFlags::Up),
        carrier: carrier && m.header.flags.contains(LinkFlags::Up),
    })
}

pub async fn links(handle: &Handle) -> Result<Vec<Link>, rtnetlink::Error> {
    let mut out = Vec::new();
    let mut s = handle.link().get().execute();
    while let Some(m) = s.try_next().await? {
        out.extend(from_message(&m));
    }
    Ok(out)
}

pub async fn set_up(handle: &Handle, index: u32, mtu: Option<u32>) -> Result<(), rtnetlink::Error> {
    let mut b = LinkUnspec::new_with_index(index).up();
    if let Some(mtu) = mtu {
        b = b.mtu(mtu);
    }
    handle.link().set(b.build()).execute().await
}

/// IPv4 addresses on the interface, as (address, prefix).
pub async fn addresses(handle: &Handle, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, rtnetlink::Error> {
    let mut out = Vec::new();
    let mut s = handle.address().get().set_link_index_filter(index).execute();
    while let Some(m) = s.try_next().await? {
        if m.header.family != AddressFamily::Inet {
            continue;
        }
        if let Some(ip) = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        }) {
            out.push((ip, m.header.prefix_len));
        }
    }
    Ok(out)
}

async fn address_messages(handle: &Handle, index: u32) -> Result<Vec<AddressMessage>, rtnetlink::Error> {
    handle.address().get().set_link_index_filter(index).execute().try_collect().await
}

/// Makes `addr/prefix` the only IPv4 address on the interface (idempotent).
pub async fn set_address(handle: &Handle, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<(), rtnetlink::Error> {
    for m in address_messages(handle, index).await? {
        let this = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        if m.header.family == AddressFamily::Inet && this.is_some_and(|ip| ip != addr || m.header.prefix_len != prefix)
        {
            handle.address().del(m).execute().await?;
        }
    }
    handle.address().add(index, IpAddr::V4(addr), prefix).replace().execute().await
}

pub async fn flush_addresses(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    for m in address_messages(handle, index).await? {
        if m.header.family == AddressFamily::Inet {
            handle.address().del(m).execute().await?;
        }
    }
    Ok(())
}

/// The default route of the main table through `gateway` on this interface (replaces).
pub async fn set_default_route(handle: &Handle, index: u32, gateway: Ipv4Addr) -> Result<(), rtnetlink::Error> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new().output_interface(index).gateway(gateway).build();
    handle.route().add(msg).replace().execute().await
}

/// The gateway of the default route through this interface, if any.
pub async fn default_gateway(handle: &Handle, index: u32) -> Result<Option<Ipv4Addr>, rtnetlink::Error> {
    let mut s = handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
    while let Some(r) = s.try_next().await? {
        let oif = r.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
        let is_default = r.header.destination_prefix_length == 0;
        let gw = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
            _ => None,
        });
        if oif && is_default && gw.is_some() {
            return Ok(gw);
        }
    }
    Ok(None)
}

/// Writes resolv.conf atomically (on a client it is in the RAM-backed /etc).
pub fn write_resolv_conf(path: &Path, dns: &[Ipv4Addr], note: &str) -> std::io::Result<()> {
    let mut text = format!("# Written by gsed ({note}); edits are lost at the next lease.\n");
    for d in dns {
        text.push_str(&format!("nameserver {d}\n"));
    }
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    crate::fsutil::write_atomic(path, text.as_bytes(), 0o644)
}

/// Whether a kernel interface is a physical wired Ethernet port: ARP type
/// Ethernet, backed by a device, and not wireless, a bridge, a bond or a tunnel.
/// Uses udev's properties where the udev daemon ran, sysfs otherwise.
pub fn is_physical_wired(name: &str) -> bool {
    let Ok(mut e) = udev::Enumerator::new() else { return sysfs_wired(name) };
    let _ = e.match_subsystem("net");
    let _ = e.match_sysname(name);
    let Some(dev) = e.scan_devices().ok().and_then(|mut d| d.next()) else { return sysfs_wired(name) };
    let prop = |k: &str| dev.property_value(k).map(|v| v.to_string_lossy().into_owned());
    if matches!(
        dev.devtype().map(|d| d.to_string_lossy().into_owned()).as_deref(),
        Some("wlan" | "bridge" | "bond" | "vlan" | "wwan")
    ) {
        return false;
    }
    if prop("ID_NET_DRIVER").as_deref() == Some("veth") || prop("INTERFACE").is_none() && !sysfs_wired(name) {
        return false;
    }
    sysfs_wired(name)
}

fn sysfs_wired(name: &str) -> bool {
    let base = Path::new("/sys/class/net").join(name);
    let read = |f: &str| std::fs::read_to_string(base.join(f)).map(|s| s.trim().to_owned()).unwrap_or_default();
    read("type") == "1"
        && base.join("device").exists()
        && !base.join("wireless").exists()
        && !base.join("phy80211").exists()
        && !base.join("bridge").exists()
        && !base.join("bonding").exists()
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_is_not_a_wired_port() {
        assert!(!super::is_physical_wired("lo"));
        assert!(!super::is_physical_wired("gse-no-such-if0"));
    }
}
