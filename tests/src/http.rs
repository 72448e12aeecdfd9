//! Real HTTP servers for server tests: nginx with the repository's example
//! server block, and two misbehaving servers (one answers 500, one hangs).

use std::{
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::{ProcessGuard, repo, require_tool, wait_for};

/// A free TCP port on `ip` (a loopback address).
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0)).expect("bind").local_addr().expect("addr").port()
}

/// nginx serving `docroot` on `ip:port` with `init-scripts/nginx/gse.conf`.
pub struct Nginx {
    pub addr: String,
    pub docroot: PathBuf,
    dir: tempfile::TempDir,
    process: Option<ProcessGuard>,
    netns: Option<String>,
    /// nginx's `limit_rate` (bytes a second), for a slow server.
    pub limit_rate: Option<u32>,
}

impl Nginx {
    pub fn start(ip: &str, docroot: &Path) -> Nginx {
        let port = free_port(ip);
        Self::start_at(format!("{ip}:{port}"), docroot, None)
    }

    /// nginx inside network namespace `netns`, listening on `addr` there.
    pub fn start_in(netns: &str, addr: &str, docroot: &Path) -> Nginx {
        Self::start_at(addr.to_owned(), docroot, Some(netns.to_owned()))
    }

    fn start_at(addr: String, docroot: &Path, netns: Option<String>) -> Nginx {
        let mut n = Nginx {
            addr,
            docroot: docroot.to_owned(),
            dir: tempfile::Builder::new().prefix("gse-nginx-").tempdir().expect("tempdir"),
            process: None,
            netns,
            limit_rate: None,
        };
        n.restart();
        n
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it (as a crash or a power cut of the server would).
    pub fn stop(&mut self) {
        self.process = None;
    }

    pub fn restart(&mut self) {
        let nginx = require_tool("nginx", "nginx");
        let d = self.dir.path();
        fs::create_dir_all(d.join("tmp")).expect("mkdir");
        let block = fs::read_to_string(repo().join("init-scripts/nginx/gse.conf"))
            .expect("init-scripts/nginx/gse.conf")
            .replace("listen 80;", &format!("listen {};", self.addr))
            .replace("root /srv/gse;", &format!("root {};", self.docroot.display()));
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n access_log {d}/access.log;\n client_body_temp_path {d}/tmp/body;\n proxy_temp_path {d}/tmp/proxy;\n\
             fastcgi_temp_path {d}/tmp/fastcgi;\n uwsgi_temp_path {d}/tmp/uwsgi;\n scgi_temp_path {d}/tmp/scgi;\n\
             default_type application/octet-stream;\n{rate}{block}\n}}\n",
            d = d.display(),
            rate = self.limit_rate.map(|r| format!(" limit_rate {r};\n")).unwrap_or_default(),
        );
        fs::write(d.join("nginx.conf"), conf).expect("nginx.conf");
        let _ = fs::remove_file(d.join("nginx.pid"));
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&nginx);
                c
            }
            None => Command::new(&nginx),
        };
        let child = cmd
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-e")
            .arg(d.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        self.process = Some(ProcessGuard { child: Some(child), name: "nginx".into() });
        let addr = self.addr.clone();
        if self.netns.is_some() {
            // Not reachable from here: nginx writes its pid once it listens.
            let pid = d.join("nginx.pid");
            wait_for(Duration::from_secs(10), &format!("nginx on {addr}"), || pid.exists().then_some(()));
        } else {
            wait_for(Duration::from_secs(10), &format!("nginx on {addr}"), || {
                TcpStream::connect(&addr).ok().map(|_| ())
            });
        }
    }

    /// nginx's access log so far (a request is logged once it completes).
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Sets the load it advertises in `gse1/status.json`.
    pub fn set_load(&self, load: f64) {
        let p = self.docroot.join("gse1/status.json");
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        let tmp = p.with_extension("tmp");
        fs::write(&tmp, format!("{{\"load\": {load}}}\n")).expect("status.json");
        fs::rename(tmp, p).expect("rename");
    }
}

/// A server that answers every request with 500, or (hang) never answers.
pub struct BadServer {
    pub addr: String,
    stop: Arc<AtomicBool>,
}

impl BadServer {
    pub fn start(hang: bool) -> BadServer {
        Self::serve(hang, b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 5\r\nconnection: close\r\n\r\noops\n")
    }

    /// Answers every request with 200 and `body` (garbage where JSON is expected).
    pub fn answering(body: &'static str) -> BadServer {
        let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        Self::serve(false, Box::leak(reply.into_bytes().into_boxed_slice()))
    }

    fn serve(hang: bool, reply: &'static [u8]) -> BadServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) if hang => {
                        let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
                        let _ = s.read(&mut [0u8; 1024]);
                        held.push(s);
                    }
                    Ok((mut s, _)) => {
                        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                        let _ = s.read(&mut [0u8; 4096]);
                        let _ = s.write_all(reply);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        BadServer { addr, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for BadServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
