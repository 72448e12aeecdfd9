//! Shared helpers for the integration tests: real binaries, a private
//! `dbus-daemon` with the project's real policy, temporary roots. Every process and
//! directory is owned by a guard that removes it on drop, even when a test fails.

pub mod client;
pub mod disk;
pub mod http;
pub mod netns;
pub mod sim;
pub mod update_sim;
pub mod vm;

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// The repository's top directory.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

/// `target/<profile>` of the running test or benchmark.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> or target/<profile>/<bench> → target/<profile>
    let mut dir = exe.parent().expect("binary has a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps has a parent");
    }
    dir.to_owned()
}

/// A binary of this workspace, built by `cargo build --bins` (the README's test
/// command does it first).
pub fn bin(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests (see README)",
        path.display()
    );
    path
}

/// Fails loudly when a tool the tests need is not installed; CI must install it.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(tool)).find(|p| p.exists()))
        .unwrap_or_default();
    found.unwrap_or_else(|| panic!("`{tool}` is not installed: apt-get install -y {package} (.ci/run does this)"))
}

/// Polls `f` until it returns Some, or panics after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process killed (SIGTERM, then SIGKILL) when dropped.
pub struct ProcessGuard {
    pub child: Option<Child>,
    pub name: String,
}

impl ProcessGuard {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Sends `sig` and waits up to `timeout` for exit; returns the exit status.
    pub fn stop_with(&mut self, sig: Signal, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), sig);
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(2) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A private system-like `dbus-daemon` that loads the real `dbus/org.gentoo.Gse1.conf`.
pub struct TestBus {
    pub dir: tempfile::TempDir,
    pub address: String,
    _daemon: ProcessGuard,
}

impl TestBus {
    pub fn start() -> TestBus {
        Self::start_with(&[])
    }

    /// With more policy files included (another service's, such as polkit's).
    pub fn start_with(extra_policies: &[&Path]) -> TestBus {
        let daemon = require_tool("dbus-daemon", "dbus-daemon");
        let dir = tempfile::Builder::new().prefix("gse-bus-").tempdir().expect("tempdir");
        // Reachable by the unprivileged test user, too.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let socket = dir.path().join("bus.sock");
        let config = fs::read_to_string(repo().join("tests/data/system-bus.conf.in"))
            .expect("tests/data/system-bus.conf.in")
            .replace("@SOCKET@", &socket.display().to_string())
            .replace("@POLICY@", &repo().join("dbus/org.gentoo.Gse1.conf").display().to_string())
            .replace(
                "</busconfig>",
                &extra_policies.iter().map(|p| format!("  <include>{}</include>\n", p.display())).collect::<String>(),
            )
            + "</busconfig>\n";
        let config_path = dir.path().join("bus.conf");
        fs::write(&config_path, config).expect("write bus config");
        let child = Command::new(daemon)
            .arg(format!("--config-file={}", config_path.display()))
            .arg("--nofork")
            .arg("--nopidfile")
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("bus.log")).expect("bus log"))
            .spawn()
            .expect("start dbus-daemon");
        let guard = ProcessGuard { child: Some(child), name: "dbus-daemon".into() };
        wait_for(Duration::from_secs(10), "the dbus-daemon socket", || socket.exists().then_some(()));
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o777)).expect("chmod socket");
        TestBus { address: format!("unix:path={}", socket.display()), dir, _daemon: guard }
    }

    /// A zbus connection to this bus as the test process (root).
    pub async fn connect(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.address.as_str()).build().await.expect("connect to test bus")
    }

    /// Stops the bus daemon, as a crash or a restart of dbus-daemon would.
    pub fn kill_daemon(&mut self) {
        self._daemon.stop_with(Signal::SIGKILL, Duration::from_secs(5));
    }

    /// True when someone owns `org.gentoo.Gse1` on this bus.
    pub fn gsed_owns_name(&self) -> bool {
        busctl(&self.address, &["status", gse_dbus::BUS_NAME]).status.success()
    }
}

/// Runs `busctl --address=ADDR ARGS` and returns its output.
pub fn busctl(address: &str, args: &[&str]) -> Output {
    Command::new(require_tool("busctl", "systemd"))
        .arg(format!("--address={address}"))
        .args(args)
        .output()
        .expect("run busctl")
}

/// A temporary `--root` tree.
pub struct TestRoot {
    pub dir: tempfile::TempDir,
}

impl TestRoot {
    pub fn new() -> TestRoot {
        TestRoot { dir: tempfile::Builder::new().prefix("gse-root-").tempdir().expect("tempdir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file under the root, creating its directories.
    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.path().join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, content).expect("write");
        p
    }

    /// Installs a check program (`kind` is `required` or `wanted`).
    pub fn check(&self, kind: &str, name: &str, script: &str) {
        let p = self.write(&format!("etc/gse/checks/{kind}/{name}"), &format!("#!/bin/sh\n{script}\n"));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    /// Sets `[health]` keys in the image's default boot.conf.
    pub fn health_conf(&self, toml: &str) {
        self.write("usr/share/gse/config.d/system/boot.conf", &format!("[health]\ninit = \"none\"\n{toml}\n"));
    }

    pub fn journal(&self) -> PathBuf {
        self.path().join("user-data/persistent/gse/health.journal")
    }
}

impl Default for TestRoot {
    fn default() -> Self {
        Self::new()
    }
}

/// Starts `gsed` on `bus` with `root` and waits until it owns its name.
pub fn start_gsed(bus: &TestBus, root: &TestRoot, boot_id: &str) -> ProcessGuard {
    start_gsed_in(bus, root, boot_id, None)
}

/// Like [`start_gsed`], inside network namespace `netns` when given.
pub fn start_gsed_in(bus: &TestBus, root: &TestRoot, boot_id: &str, netns: Option<&str>) -> ProcessGuard {
    let cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin("gsed"));
            c
        }
        None => Command::new(bin("gsed")),
    };
    spawn_gsed(cmd, bus, root, boot_id)
}

/// Starts `cmd` (gsed, possibly behind nsenter or ip netns) as the daemon for
/// `root` on `bus`, and waits until it owns its name.
pub fn spawn_gsed(mut cmd: Command, bus: &TestBus, root: &TestRoot, boot_id: &str) -> ProcessGuard {
    let child = cmd
        .args(["--bus", &bus.address, "--root"])
        .arg(root.path())
        .args(["--boot-id", boot_id])
        .env("GSE_LOG", "debug")
        .env_remove("NOTIFY_SOCKET")
        .stderr(fs::File::create(root.path().join(format!("gsed-{boot_id}.log"))).expect("log file"))
        .spawn()
        .expect("start gsed");
    let mut guard = ProcessGuard { child: Some(child), name: "gsed".into() };
    wait_for(Duration::from_secs(10), "gsed to own org.gentoo.Gse1", || {
        assert!(
            guard.is_running(),
            "gsed exited early; see {}",
            root.path().join(format!("gsed-{boot_id}.log")).display()
        );
        bus.gsed_owns_name().then_some(())
    });
    guard
}

/// Runs `gsectl --bus ADDR ARGS` as root.
pub fn gsectl(bus: &str, args: &[&str]) -> Output {
    Command::new(bin("gsectl")).args(["--bus", bus]).args(args).output().expect("run gsectl")
}

/// Runs `gsectl` as the unprivileged user `nobody` (uid/gid 65534).
pub fn gsectl_as_nobody(bus: &str, args: &[&str]) -> Output {
    Command::new(require_tool("setpriv", "util-linux"))
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("gsectl"))
        .args(["--bus", bus])
        .args(args)
        .output()
        .expect("run setpriv gsectl")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `gsectl keygen` into `dir` (`NAME.sec`, `NAME.pub`); returns the public key line's value.
pub fn keygen(dir: &Path, name: &str) -> String {
    let (sec, publ) = (dir.join(format!("{name}.sec")), dir.join(format!("{name}.pub")));
    let out = Command::new(bin("gsectl"))
        .arg("keygen")
        .arg("--secret")
        .arg(&sec)
        .arg("--public")
        .arg(&publ)
        .output()
        .expect("gsectl keygen");
    assert!(out.status.success(), "gsectl keygen: {}", text(&out.stderr));
    text(&out.stdout).trim().trim_start_matches("public_key = \"").trim_end_matches('"').to_owned()
}

/// `gsectl image build --rootfs TREE --version VERSION --out OUT EXTRA...`.
pub fn image_build(tree: &Path, version: &str, out: &Path, extra: &[&str]) -> Output {
    Command::new(bin("gsectl"))
        .args(["image", "build", "--rootfs"])
        .arg(tree)
        .args(["--version", version, "--out"])
        .arg(out)
        .args(extra)
        .output()
        .expect("gsectl image build")
}

/// `gsectl publish config --from FROM --to TO --secret SECRET`.
pub fn publish_config(from: &Path, to: &Path, secret: &Path) -> Output {
    Command::new(bin("gsectl"))
        .args(["publish", "config", "--from"])
        .arg(from)
        .arg("--to")
        .arg(to)
        .arg("--secret")
        .arg(secret)
        .output()
        .expect("gsectl publish")
}

/// `gsectl publish image --image IMAGE --version V --channel CHANNEL --to TO
/// --secret SECRET --no-kernel`: the integration tests' images are made up
/// and carry no kernel (a kernel one carries is checked all the same).
pub fn publish_image(image: &Path, version: &str, channel: &str, to: &Path, secret: &Path) -> Output {
    publish_image_with(image, version, channel, to, secret, &["--no-kernel"])
}

/// `gsectl publish image` as an administrator runs it for a bootable image, plus `extra`.
pub fn publish_image_with(
    image: &Path,
    version: &str,
    channel: &str,
    to: &Path,
    secret: &Path,
    extra: &[&str],
) -> Output {
    Command::new(bin("gsectl"))
        .args(["publish", "image", "--image"])
        .arg(image)
        .args(["--version", version, "--channel", channel, "--to"])
        .arg(to)
        .arg("--secret")
        .arg(secret)
        .args(extra)
        .output()
        .expect("gsectl publish image")
}
