//! A DHCPv4 client (RFC 2131) on one interface. The protocol encoding is
//! dhcproto's; this module is the exchange: DISCOVER/OFFER/REQUEST/ACK, renewal
//! at T1 (unicast), rebinding at T2 (broadcast), release.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use dhcproto::{
    Decodable, Decoder, Encodable, Encoder,
    v4::{DhcpOption, Flags, Message, MessageType, OptionCode},
};
use tokio::net::UdpSocket;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub server: Ipv4Addr,
    pub lease_secs: u32,
    pub t1: u32,
    pub t2: u32,
    /// When the ACK arrived.
    pub obtained: Instant,
    /// The same, in seconds since the epoch, for reporting.
    pub obtained_epoch: u64,
}

impl Lease {
    pub fn renew_at(&self) -> Instant {
        self.obtained + Duration::from_secs(u64::from(self.t1))
    }
    pub fn rebind_at(&self) -> Instant {
        self.obtained + Duration::from_secs(u64::from(self.t2))
    }
    pub fn expires_at(&self) -> Instant {
        self.obtained + Duration::from_secs(u64::from(self.lease_secs))
    }
    pub fn expires_epoch(&self) -> u64 {
        self.obtained_epoch + u64::from(self.lease_secs)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("no DHCP server answered")]
    NoAnswer,
    #[error("the DHCP server refused: {0}")]
    Nak(String),
    #[error("DHCP socket: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Client {
    socket: UdpSocket,
    mac: Vec<u8>,
    hostname: String,
}

/// A BOOTREQUEST with every other field zero. dhcproto's constructors draw an
/// xid from rand's OS generator, which blocks in getrandom(2) until the
/// kernel's random pool is ready: 1.4 s of early boot under qemu, on a machine
/// without a hardware RNG. The xid is chosen here (fastrand, seeded without
/// blocking), so messages start from this blank one.
fn blank() -> Message {
    let mut bytes = [0u8; 241];
    bytes[..3].copy_from_slice(&[1, 1, 6]); // BOOTREQUEST, Ethernet, 6-byte address
    bytes[236..240].copy_from_slice(&[99, 130, 83, 99]); // the magic cookie
    bytes[240] = 255; // no options
    Message::decode(&mut Decoder::new(&bytes)).expect("a constant BOOTREQUEST decodes")
}

impl Client {
    /// A client bound to port 68 on `ifname` only.
    pub fn new(ifname: &str, mac: &[u8], hostname: &str) -> Result<Client, DhcpError> {
        let sock = socket2_bind(ifname)?;
        Ok(Client { socket: UdpSocket::from_std(sock)?, mac: mac.to_vec(), hostname: hostname.to_owned() })
    }

    fn message(&self, xid: u32, kind: MessageType, ciaddr: Ipv4Addr, broadcast: bool) -> Message {
        let mut m = blank();
        m.set_xid(xid).set_chaddr(&self.mac).set_ciaddr(ciaddr);
        if broadcast {
            m.set_flags(Flags::default().set_broadcast());
        }
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        // Client identifier: type 1 (Ethernet) and the MAC, as most clients send.
        let mut id = vec![1u8];
        id.extend_from_slice(&self.mac);
        o.insert(DhcpOption::ClientIdentifier(id));
        if !self.hostname.is_empty() {
            o.insert(DhcpOption::Hostname(self.hostname.clone()));
        }
        o.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::AddressLeaseTime,
            OptionCode::Renewal,
            OptionCode::Rebinding,
        ]));
        m
    }

    async fn send(&self, m: &Message, to: Ipv4Addr) -> Result<(), DhcpError> {
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf)).map_err(|e| DhcpError::Io(std::io::Error::other(e.to_string())))?;
        self.socket.send_to(&buf, SocketAddrV4::new(to, 67)).await?;
        Ok(())
    }

    /// Waits up to `wait` for a reply to `xid` of one of `kinds`.
    async fn receive(&self, xid: u32, kinds: &[MessageType], wait: Duration) -> Result<Option<Message>, DhcpError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = vec![0u8; 1500];
        loop {
            let Ok(r) = tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buf)).await else {
                return Ok(None);
            };
            let (n, _) = r?;
            let Some(m) = decode(&buf[..n]) else { continue };
            if m.xid() != xid || m.chaddr().get(..self.mac.len()) != Some(&self.mac[..]) {
                continue;
            }
            match m.opts().msg_type() {
                Some(MessageType::Nak) => {
                    let why = match m.opts().get(OptionCode::Message) {
                        Some(DhcpOption::Message(s)) => s.clone(),
                        _ => "NAK".into(),
                    };
                    return Err(DhcpError::Nak(why));
                }
                Some(t) if kinds.contains(&t) => return Ok(Some(m)),
                _ => continue,
            }
        }
    }

    /// DISCOVER → OFFER → REQUEST → ACK, each step retried with growing timeouts.
    /// Retransmissions keep the transaction id, so a late OFFER (dnsmasq pings an
    /// address for a few seconds before offering it) still counts.
    pub async fn acquire(&self, previous: Option<Ipv4Addr>) -> Result<Lease, DhcpError> {
        let xid = fastrand::u32(..);
        // A first DISCOVER sent as the link comes up is often lost: ask again
        // soon (one LAN, one server a hop away), then back off.
        for wait in [250u64, 500, 1000, 2000, 4000].map(Duration::from_millis) {
            let mut d = self.message(xid, MessageType::Discover, Ipv4Addr::UNSPECIFIED, true);
            if let Some(ip) = previous {
                d.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
            }
            self.send(&d, Ipv4Addr::BROADCAST).await?;
            let Some(offer) = self.receive(xid, &[MessageType::Offer], wait).await? else {
                continue;
            };
            let server = match offer.opts().get(OptionCode::ServerIdentifier) {
                Some(DhcpOption::ServerIdentifier(s)) => *s,
                _ => continue,
            };
            let mut r = self.message(xid, MessageType::Request, Ipv4Addr::UNSPECIFIED, true);
            r.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
            r.opts_mut().insert(DhcpOption::ServerIdentifier(server));
            self.send(&r, Ipv4Addr::BROADCAST).await?;
            if let Some(ack) = self.receive(xid, &[MessageType::Ack], wait.max(Duration::from_secs(1))).await? {
                return Ok(lease_of(&ack, server));
            }
        }
        Err(DhcpError::NoAnswer)
    }

    /// REQUEST for the lease we hold: unicast to its server (renewing) or
    /// broadcast (rebinding, or after the cable came back).
    pub async fn extend(&self, lease: &Lease, broadcast: bool, wait: Duration) -> Result<Lease, DhcpError> {
        let xid = fastrand::u32(..);
        let m = self.message(xid, MessageType::Request, lease.address, false);
        self.send(&m, if broadcast { Ipv4Addr::BROADCAST } else { lease.server }).await?;
        match self.receive(xid, &[MessageType::Ack], wait).await? {
            Some(ack) => Ok(lease_of(&ack, lease.server)),
            None => Err(DhcpError::NoAnswer),
        }
    }

    pub async fn release(&self, lease: &Lease) -> Result<(), DhcpError> {
        let mut m = self.message(fastrand::u32(..), MessageType::Release, lease.address, false);
        m.opts_mut().insert(DhcpOption::ServerIdentifier(lease.server));
        self.send(&m, lease.server).await
    }
}

/// Decodes a datagram from the network. dhcproto panics on some malformed
/// options (found by tests/fuzz): anyone on the wire can send one, so a panic is
/// a datagram ignored, never a crash.
fn decode(bytes: &[u8]) -> Option<Message> {
    std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(bytes)).ok()).ok().flatten()
}

/// A reply as it comes off the wire, read as a lease (what `acquire` does with an
/// ACK); None when it does not decode. For the fuzzer.
pub fn lease_from_bytes(bytes: &[u8]) -> Option<Lease> {
    let m = decode(bytes)?;
    let _ = m.opts().msg_type();
    Some(lease_of(&m, Ipv4Addr::UNSPECIFIED))
}

fn lease_of(ack: &Message, server: Ipv4Addr) -> Lease {
    let o = ack.opts();
    let mask = match o.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => u32::from(*m).count_ones() as u8,
        _ => 24,
    };
    let router = match o.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let dns = match o.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => Vec::new(),
    };
    let lease_secs = match o.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) => *t,
        _ => 3600,
    };
    let t1 = match o.get(OptionCode::Renewal) {
        Some(DhcpOption::Renewal(t)) => *t,
        _ => lease_secs / 2,
    };
    let t2 = match o.get(OptionCode::Rebinding) {
        Some(DhcpOption::Rebinding(t)) => *t,
        _ => lease_secs / 8 * 7,
    };
    let server = match o.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => server,
    };
    Lease {
        address: ack.yiaddr(),
        prefix: mask,
        router,
        dns,
        server,
        lease_secs,
        t1: t1.min(lease_secs),
        t2: t2.clamp(t1.min(lease_secs), lease_secs),
        obtained: Instant::now(),
        obtained_epoch: crate::journal::now(),
    }
}

/// A UDP socket on 0.0.0.0:68 that sends and receives only on `ifname`, and may
/// broadcast before the interface has an address.
fn socket2_bind(ifname: &str) -> Result<std::net::UdpSocket, DhcpError> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn, sockopt};
    let fd =
        socket::socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)
            .map_err(std::io::Error::from)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(std::io::Error::from)?;
    socket::setsockopt(&fd, sockopt::Broadcast, &true).map_err(std::io::Error::from)?;
    socket::setsockopt(&fd, sockopt::BindToDevice, &std::ffi::OsString::from(ifname)).map_err(std::io::Error::from)?;
    socket::bind(fd.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, 68)).map_err(std::io::Error::from)?;
    Ok(std::net::UdpSocket::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{HType, Opcode};

    #[test]
    fn the_blank_message_is_an_empty_bootrequest_that_takes_our_fields() {
        let mut m = blank();
        assert_eq!((m.opcode(), m.htype(), m.xid()), (Opcode::BootRequest, HType::Eth, 0));
        assert!(m.opts().iter().next().is_none(), "no options");
        let mac = [0x52, 0x54, 0, 0x47, 0x53, 1];
        m.set_xid(0xdead_beef).set_chaddr(&mac).set_ciaddr(Ipv4Addr::new(192, 0, 2, 57));
        let mut bytes = Vec::new();
        m.encode(&mut Encoder::new(&mut bytes)).unwrap();
        let back = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!((back.xid(), back.chaddr(), back.ciaddr()), (0xdead_beef, &mac[..], Ipv4Addr::new(192, 0, 2, 57)));
        assert_eq!(bytes[2], 6, "hlen follows chaddr");
    }
}
