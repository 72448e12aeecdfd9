//! The wired network (DESIGN §7): which interfaces gsed manages, one task per
//! interface that keeps it configured (static, or DHCPv4 with renewal), carrier
//! tracking from rtnetlink's multicast link events, and the state on D-Bus.
//!
//! Safety: with `--root` (tests, demos) gsed touches only interfaces that
//! network.conf names; only on a real client does an empty network.conf mean
//! DHCP on every physical wired interface.

pub mod dhcp;
pub mod link;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use gse_dbus::network::{AddrMethod, Interface, LinkState};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::AsyncSocket;
use rtnetlink::Handle;
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use crate::{
    config::live::ConfigService,
    config::{InterfaceConf, Method, NetworkConf, parse_cidr},
    paths::Paths,
};
use dhcp::{Client, DhcpError, Lease};

/// How holding a lease ended.
enum Kept {
    Extended(Lease),
    CarrierLost,
    /// Expired, or refused (NAK): the state to show and why.
    Lost(LinkState, String),
}

/// One interface's state, as the bus and `gsectl network` show it.
pub type IfaceState = Interface;

/// Every interface's state, by name.
pub type Interfaces = BTreeMap<String, IfaceState>;

/// Per interface name: index, carrier, MAC.
type Carriers = BTreeMap<String, (u32, bool, Vec<u8>)>;

pub struct NetworkService {
    paths: Paths,
    config: Arc<ConfigService>,
    state: watch::Sender<Interfaces>,
    carrier: watch::Sender<Carriers>,
    renew: Notify,
    /// The lease each DHCP interface holds, by interface name.
    leases: Mutex<BTreeMap<String, Lease>>,
}

impl NetworkService {
    pub fn new(paths: &Paths, config: Arc<ConfigService>) -> Arc<Self> {
        Arc::new(NetworkService {
            paths: paths.clone(),
            config,
            state: watch::Sender::new(BTreeMap::new()),
            carrier: watch::Sender::new(BTreeMap::new()),
            renew: Notify::new(),
            leases: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<Interfaces> {
        self.state.subscribe()
    }

    pub fn snapshot(&self) -> Vec<IfaceState> {
        self.state.borrow().values().cloned().collect()
    }

    /// Asks every DHCP interface to renew its lease now.
    pub fn renew(&self) {
        self.renew.notify_waiters();
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut IfaceState)) {
        self.state.send_if_modified(|m| {
            let e =
                m.entry(name.to_owned()).or_insert_with(|| IfaceState { name: name.to_owned(), ..Default::default() });
            let before = e.clone();
            f(e);
            *e != before
        });
    }

    /// Which interfaces to configure, and how.
    fn plan(&self, conf: &NetworkConf, links: &[link::Link]) -> BTreeMap<String, InterfaceConf> {
        if !conf.interface.is_empty() || !self.paths.is_real_root() {
            return conf.interface.clone();
        }
        links
            .iter()
            .filter(|l| link::is_physical_wired(&l.name))
            .map(|l| {
                (
                    l.name.clone(),
                    InterfaceConf { method: Method::Dhcp, address: None, gateway: None, dns: vec![], mtu: None },
                )
            })
            .collect()
    }

    /// Runs until the daemon stops. Errors setting up netlink are reported and end it.
    pub async fn run(self: Arc<Self>) {
        let (mut conn, handle, mut messages) = match rtnetlink::new_connection() {
            Ok(c) => c,
            Err(e) => return warn!(error = %e, "no rtnetlink; the network is not managed"),
        };
        let groups = netlink_sys::SocketAddr::new(0, rtnetlink::constants::RTMGRP_LINK);
        if let Err(e) = conn.socket_mut().socket_mut().bind(&groups) {
            warn!(error = %e, "cannot follow link events; carrier changes are not seen");
        }
        tokio::spawn(conn);
        let mut cfg = self.config.subscribe();
        let mut tasks: BTreeMap<String, (InterfaceConf, JoinHandle<()>)> = BTreeMap::new();
        loop {
            let conf = self.config.current().loaded.settings.network.clone();
            let links = link::links(&handle).await.unwrap_or_default();
            self.carrier
                .send_replace(links.iter().map(|l| (l.name.clone(), (l.index, l.carrier, l.mac.clone()))).collect());
            let plan = if conf.manage { self.plan(&conf, &links) } else { BTreeMap::new() };
            // Stop tasks whose interface left the plan or whose settings changed.
            tasks.retain(|name, (c, t)| {
                let keep = plan.get(name) == Some(c) && !t.is_finished();
                if !keep {
                    t.abort();
                }
                keep
            });
            self.state.send_if_modified(|m| {
                let before = m.len();
                // Unmanaged interfaces are all reported; managed ones are those planned.
                m.retain(|n, _| !conf.manage || plan.contains_key(n));
                before != m.len()
            });
            for (name, ic) in &plan {
                if tasks.contains_key(name) {
                    continue;
                }
                let me = self.clone();
                let (h, n, c) = (handle.clone(), name.clone(), ic.clone());
                let hostname = conf.hostname.clone();
                tasks.insert(
                    name.clone(),
                    (ic.clone(), tokio::spawn(async move { me.manage(h, n, c, hostname).await })),
                );
            }
            if !conf.manage {
                for l in &links {
                    let addrs = link::addresses(&handle, l.index).await.unwrap_or_default();
                    self.update(&l.name, |s| {
                        s.state = LinkState::Unmanaged;
                        s.method = AddrMethod::None;
                        s.carrier = l.carrier;
                        s.addresses = addrs.iter().map(|(a, p)| format!("{a}/{p}")).collect();
                    });
                }
            }
            // Links gsed has no business with (the host's, under --root) cause no pass.
            let relevant = |name: &str| {
                !conf.manage
                    || conf.interface.contains_key(name)
                    || (conf.interface.is_empty() && self.paths.is_real_root() && link::is_physical_wired(name))
            };
            loop {
                tokio::select! {
                    changed = cfg.changed() => if changed.is_err() { return } else { break },
                    msg = messages.next() => {
                        let Some((msg, _)) = msg else { return };
                        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m) | RouteNetlinkMessage::DelLink(m)) = msg.payload
                            && let Some(l) = link::from_message(&m)
                        {
                            if !relevant(&l.name) {
                                continue;
                            }
                            self.carrier.send_if_modified(|c| {
                                let new = (l.index, l.carrier, l.mac.clone());
                                let changed = c.get(&l.name) != Some(&new);
                                c.insert(l.name.clone(), new);
                                changed
                            });
                        }
                        // New interfaces are picked up on the next pass; coalesce bursts.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        break;
                    }
                }
            }
            debug!("network pass");
        }
    }

    /// Waits until `name` exists and has carrier; returns its index and MAC.
    async fn wait_carrier(&self, name: &str, rx: &mut watch::Receiver<Carriers>) -> (u32, Vec<u8>) {
        loop {
            let now = rx.borrow_and_update().get(name).cloned();
            match now {
                Some((index, true, mac)) => return (index, mac),
                Some(_) => self.update(name, |s| {
                    s.state = LinkState::NoCarrier;
                    s.carrier = false;
                    s.detail = "no cable or the other end is down".into();
                }),
                None => self.update(name, |s| {
                    s.state = LinkState::Absent;
                    s.carrier = false;
                    s.detail = format!("network.conf names {name}, but there is no such interface");
                }),
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    fn carrier_of(&self, name: &str) -> bool {
        self.carrier.borrow().get(name).is_some_and(|c| c.1)
    }

    /// Keeps one interface configured, forever.
    async fn manage(self: Arc<Self>, h: Handle, name: String, ic: InterfaceConf, hostname: String) {
        let mut carrier = self.carrier.subscribe();
        let method = match ic.method {
            Method::Dhcp => AddrMethod::Dhcp,
            Method::Static => AddrMethod::Static,
        };
        self.update(&name, |s| s.method = method);
        let known = carrier.borrow().get(&name).map(|c| c.0);
        let index = match known {
            Some(i) => i,
            None => self.wait_carrier(&name, &mut carrier).await.0,
        };
        if let Err(e) = link::set_up(&h, index, ic.mtu).await {
            self.update(&name, |s| {
                s.state = LinkState::Error;
                s.detail = format!("cannot bring {name} up: {e}");
            });
            return;
        }
        loop {
            let (index, mac) = self.wait_carrier(&name, &mut carrier).await;
            self.update(&name, |s| {
                s.carrier = true;
                // An expired lease stays visible as such until a new one arrives.
                if s.state != LinkState::Expired {
                    s.state = LinkState::Configuring;
                    s.detail.clear();
                }
            });
            let result = match ic.method {
                Method::Static => self.run_static(&h, &name, index, &ic, &mut carrier).await,
                Method::Dhcp => self.run_dhcp(&h, &name, index, &mac, &hostname, &mut carrier).await,
            };
            if let Err(e) = result {
                self.update(&name, |s| {
                    s.state = LinkState::Error;
                    s.detail = e;
                });
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }

    async fn run_static(
        &self,
        h: &Handle,
        name: &str,
        index: u32,
        ic: &InterfaceConf,
        carrier: &mut watch::Receiver<Carriers>,
    ) -> Result<(), String> {
        let (addr, prefix) = parse_cidr(ic.address.as_deref().unwrap_or_default())?;
        link::set_address(h, index, addr, prefix)
            .await
            .map_err(|e| format!("cannot set {addr}/{prefix} on {name}: {e}"))?;
        let gw: Option<Ipv4Addr> = ic.gateway.as_deref().and_then(|g| g.parse().ok());
        if let Some(gw) = gw {
            link::set_default_route(h, index, gw).await.map_err(|e| format!("cannot route through {gw}: {e}"))?;
        }
        let dns: Vec<Ipv4Addr> = ic.dns.iter().filter_map(|d| d.parse().ok()).collect();
        if !dns.is_empty() {
            link::write_resolv_conf(&self.paths.resolv_conf(), &dns, &format!("static, {name}"))
                .map_err(|e| format!("resolv.conf: {e}"))?;
        }
        info!(interface = name, %addr, prefix, "static address applied");
        self.update(name, |s| {
            s.state = LinkState::Static;
            s.addresses = vec![format!("{addr}/{prefix}")];
            s.gateway = gw.map(|g| g.to_string()).unwrap_or_default();
            s.dns = dns.iter().map(ToString::to_string).collect();
        });
        // Re-applied when the cable comes back.
        while self.carrier_of(name) {
            if carrier.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        Ok(())
    }

    async fn apply_lease(&self, h: &Handle, name: &str, index: u32, lease: &Lease) -> Result<(), String> {
        link::set_address(h, index, lease.address, lease.prefix)
            .await
            .map_err(|e| format!("cannot set {}: {e}", lease.address))?;
        if let Some(r) = lease.router {
            link::set_default_route(h, index, r).await.map_err(|e| format!("cannot route through {r}: {e}"))?;
        }
        if !lease.dns.is_empty() {
            link::write_resolv_conf(&self.paths.resolv_conf(), &lease.dns, &format!("DHCP on {name}"))
                .map_err(|e| format!("resolv.conf: {e}"))?;
        }
        self.update(name, |s| {
            s.state = LinkState::Bound;
            s.addresses = vec![format!("{}/{}", lease.address, lease.prefix)];
            s.gateway = lease.router.map(|r| r.to_string()).unwrap_or_default();
            s.dns = lease.dns.iter().map(ToString::to_string).collect();
            s.lease_expiry = lease.expires_epoch();
            s.detail = format!("lease from {} for {} s", lease.server, lease.lease_secs);
        });
        Ok(())
    }

    async fn run_dhcp(
        &self,
        h: &Handle,
        name: &str,
        index: u32,
        mac: &[u8],
        hostname: &str,
        carrier: &mut watch::Receiver<Carriers>,
    ) -> Result<(), String> {
        let client = Client::new(name, mac, hostname).map_err(|e| format!("DHCP on {name}: {e}"))?;
        let held = self.leases.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned();
        // After a carrier loss, first try to keep the lease we hold.
        let mut lease = match held.filter(|l| l.expires_at() > Instant::now()) {
            Some(l) => client.extend(&l, true, Duration::from_secs(2)).await.ok(),
            None => None,
        };
        let mut backoff = 1u64;
        let mut lease = loop {
            if let Some(l) = lease.take() {
                break l;
            }
            if !self.carrier_of(name) {
                return Ok(());
            }
            match client.acquire(None).await {
                Ok(l) => break l,
                Err(e) => {
                    self.update(name, |s| {
                        if s.state == LinkState::Expired {
                            s.detail = format!("the lease ran out and {e}; trying again in {backoff} s");
                        } else {
                            s.state = LinkState::NoLease;
                            s.detail = format!("{e}; trying again in {backoff} s");
                        }
                    });
                    tokio::time::sleep(Duration::from_secs(backoff)).await;
                    backoff = (backoff * 2).min(30);
                }
            }
        };
        info!(interface = name, address = %lease.address, server = %lease.server, secs = lease.lease_secs, "DHCP lease");
        loop {
            self.leases.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), lease.clone());
            self.apply_lease(h, name, index, &lease).await?;
            match self.keep_lease(name, &client, &lease, carrier).await {
                Kept::Extended(l) => {
                    info!(interface = name, address = %l.address, "DHCP lease renewed");
                    lease = l;
                }
                Kept::CarrierLost => return Ok(()),
                Kept::Lost(state, why) => {
                    warn!(interface = name, address = %lease.address, why, "DHCP lease lost; address removed");
                    let _ = link::flush_addresses(h, index).await;
                    self.leases.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
                    self.update(name, |s| {
                        s.state = state;
                        s.addresses.clear();
                        s.gateway.clear();
                        s.lease_expiry = 0;
                        s.detail = why;
                    });
                    return Ok(());
                }
            }
        }
    }

    /// Holds `lease` until it is extended: renew at T1 (unicast to its server),
    /// rebind from T2 (broadcast, any server), give up at expiry; a NAK ends it
    /// at once (the network moved on: the address must go).
    async fn keep_lease(
        &self,
        name: &str,
        client: &Client,
        lease: &Lease,
        carrier: &mut watch::Receiver<Carriers>,
    ) -> Kept {
        loop {
            let now = Instant::now();
            if now >= lease.expires_at() {
                return Kept::Lost(LinkState::Expired, "the lease ran out and no DHCP server answered".into());
            }
            let (at, broadcast) = if now < lease.renew_at() {
                (lease.renew_at(), false)
            } else {
                (now + (lease.expires_at() - now).min(Duration::from_secs(2)) / 2, now >= lease.rebind_at())
            };
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = self.renew.notified() => {}
                _ = carrier.changed() => {
                    if !self.carrier_of(name) {
                        self.update(name, |s| { s.state = LinkState::NoCarrier; s.carrier = false; });
                        return Kept::CarrierLost;
                    }
                    continue;
                }
            }
            let wait = (lease.expires_at().saturating_duration_since(Instant::now())).min(Duration::from_secs(2));
            let extended = client.extend(lease, broadcast, wait.max(Duration::from_millis(200))).await;
            debug!(interface = name, broadcast, result = ?extended.as_ref().map(|l| l.address), "DHCP renewal");
            match extended {
                Ok(l) => return Kept::Extended(l),
                Err(DhcpError::Nak(why)) => {
                    let why = format!("the DHCP server refused the lease ({why}); asking for a new one");
                    return Kept::Lost(LinkState::NoLease, why);
                }
                Err(_) => {}
            }
        }
    }

    /// Releases every DHCP lease (clean shutdown).
    pub async fn release_all(&self) {
        let leases: Vec<(String, Lease)> =
            self.leases.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(n, l)| (n.clone(), l.clone())).collect();
        for (name, lease) in leases {
            let mac = self.carrier.borrow().get(&name).map(|c| c.2.clone()).unwrap_or_default();
            if let Ok(c) = Client::new(&name, &mac, "") {
                let _ = c.release(&lease).await;
                info!(interface = name, address = %lease.address, "DHCP lease released");
            }
        }
    }
}
