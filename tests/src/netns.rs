//! Network namespaces for network tests: a client namespace and a server
//! namespace joined by a veth pair, with dnsmasq as the DHCP server. Addresses
//! are TEST-NET only (192.0.2.0/24), and every packet stays inside these
//! namespaces. Everything is removed on drop.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{ProcessGuard, require_tool, text, wait_for};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct NetLab {
    pub client_ns: String,
    pub server_ns: String,
    /// The client's end of the cable (what gsed configures).
    pub client_if: String,
    pub server_if: String,
    pub dir: tempfile::TempDir,
    dnsmasq: Option<ProcessGuard>,
    // Last: the namespaces go after what runs inside them.
    _netns: [Netns; 2],
}

/// A network namespace made by a test, deleted on drop (processes still inside
/// keep nothing alive once it is gone).
pub struct Netns(pub String);

impl Netns {
    pub fn add(name: &str) -> Netns {
        ip(&["netns", "add", name]);
        Netns(name.to_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) -> Output {
    let out = Command::new(require_tool("ip", "iproute2")).args(args).output().expect("ip");
    assert!(out.status.success(), "ip {args:?}: {}", text(&out.stderr));
    out
}

impl NetLab {
    pub fn new() -> NetLab {
        let tag = format!("{:x}{:x}", std::process::id() & 0xffff, NEXT.fetch_add(1, Ordering::SeqCst));
        let (client_ns, server_ns) = (format!("gse-c-{tag}"), format!("gse-s-{tag}"));
        let netns = [Netns::add(&client_ns), Netns::add(&server_ns)];
        let lab = NetLab {
            client_ns,
            server_ns,
            client_if: format!("gc{tag}"),
            server_if: format!("gs{tag}"),
            dir: tempfile::Builder::new().prefix("gse-net-").tempdir().expect("tempdir"),
            dnsmasq: None,
            _netns: netns,
        };
        ip(&["link", "add", &lab.client_if, "type", "veth", "peer", "name", &lab.server_if]);
        ip(&["link", "set", &lab.client_if, "netns", &lab.client_ns]);
        ip(&["link", "set", &lab.server_if, "netns", &lab.server_ns]);
        ip(&["-n", &lab.server_ns, "addr", "add", "192.0.2.1/24", "dev", &lab.server_if]);
        ip(&["-n", &lab.server_ns, "link", "set", &lab.server_if, "up"]);
        ip(&["-n", &lab.server_ns, "link", "set", "lo", "up"]);
        ip(&["-n", &lab.client_ns, "link", "set", "lo", "up"]);
        lab
    }

    pub fn dnsmasq_log(&self) -> PathBuf {
        self.dir.path().join("dnsmasq.log")
    }

    /// Starts dnsmasq as the DHCP server on the server's end (DNS off). `extra`
    /// adds options, e.g. short T1/T2 timers.
    pub fn start_dnsmasq(&mut self, extra: &[&str]) {
        self.dnsmasq = Some(dnsmasq(&self.server_ns, &self.server_if, self.dir.path(), extra));
    }

    pub fn stop_dnsmasq(&mut self) {
        self.dnsmasq = None;
    }

    /// `ip -n CLIENT ARGS` output.
    pub fn client_ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", &self.client_ns];
        a.extend_from_slice(args);
        text(&ip(&a).stdout)
    }

    /// IPv4 addresses on the client's interface.
    pub fn client_addresses(&self) -> Vec<String> {
        self.client_ip(&["-4", "-o", "addr", "show", "dev", &self.client_if])
            .lines()
            .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1).map(String::from))
            .collect()
    }

    /// Pulls the cable (the other end goes down) or plugs it back.
    pub fn set_peer(&self, up: bool) {
        ip(&["-n", &self.server_ns, "link", "set", &self.server_if, if up { "up" } else { "down" }]);
    }

    /// Moves the server's end to another address (192.0.2.1 stops answering).
    pub fn move_server(&self, to: &str) {
        ip(&["-n", &self.server_ns, "addr", "flush", "dev", &self.server_if]);
        ip(&["-n", &self.server_ns, "addr", "add", to, "dev", &self.server_if]);
    }

    pub fn dhcp_log_count(&self, what: &str) -> usize {
        fs::read_to_string(self.dnsmasq_log()).unwrap_or_default().matches(what).count()
    }
}

/// dnsmasq as the DHCP server (DNS off) on `iface` inside `netns`, handing out
/// 192.0.2.50-99 (unless `extra` brings its own `--dhcp-range`) with 192.0.2.1
/// as the router; its log and leases live in `dir`.
pub fn dnsmasq(netns: &str, iface: &str, dir: &std::path::Path, extra: &[&str]) -> ProcessGuard {
    let dnsmasq = require_tool("dnsmasq", "dnsmasq");
    let log_path = dir.join("dnsmasq.log");
    let log = fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("log");
    let child = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(dnsmasq)
        .args(["--no-daemon", "--port=0", "--bind-interfaces", "--log-dhcp", "--conf-file=/dev/null"])
        .arg(format!("--interface={iface}"))
        .args(
            (!extra.iter().any(|a| a.starts_with("--dhcp-range=")))
                .then_some("--dhcp-range=192.0.2.50,192.0.2.99,255.255.255.0,2m"),
        )
        .arg("--dhcp-option=option:router,192.0.2.1")
        .arg("--dhcp-option=option:dns-server,192.0.2.53")
        .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start dnsmasq");
    let guard = ProcessGuard { child: Some(child), name: "dnsmasq".into() };
    wait_for(Duration::from_secs(10), "dnsmasq to start", || {
        fs::read_to_string(&log_path).ok().filter(|l| l.contains("sockets bound exclusively")).map(|_| ())
    });
    guard
}

impl Default for NetLab {
    fn default() -> Self {
        Self::new()
    }
}
