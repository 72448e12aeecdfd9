//! Metrics and the room at a glance (DESIGN §13), with the real parts an
//! administrator runs: gsed's textfile checked by `promtool`, served by
//! `prometheus-node-exporter`, scraped by `prometheus` in the test's own network
//! namespace together with the shipped alert rules, read back by `gsectl fleet`,
//! and the HTML room page rendered by headless `chromium`.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use gse_tests::{
    ProcessGuard, TestBus, TestRoot, bin, gsectl, http::BadServer, netns::Netns, repo, require_tool, start_gsed, text,
    wait_for,
};

const PROM: &str = "var/lib/node_exporter/textfile_collector/gse.prom";

fn promtool_accepts(file: &Path) {
    let out = Command::new(require_tool("promtool", "prometheus"))
        .args(["check", "metrics"])
        .stdin(fs::File::open(file).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "promtool check metrics: {}{}", text(&out.stdout), text(&out.stderr));
}

fn wait_line(file: &Path, line: &str) -> String {
    wait_for(Duration::from_secs(15), line, || fs::read_to_string(file).ok().filter(|t| t.lines().any(|l| l == line)))
}

#[test]
fn the_metrics_file_follows_every_change_and_passes_promtool() {
    let (bus, root) = (TestBus::start(), TestRoot::new());
    root.health_conf("");
    root.write("run/gse/boot.json", r#"{"slot":"b","action":"bailout","image_version":"2026.11","reason":"x"}"#);
    let _gsed = start_gsed(&bus, &root, "b1");
    let file = root.path().join(PROM);
    let text0 = wait_line(&file, r#"gse_health_status{status="green"} 1"#);
    assert!(text0.contains(r#"gse_boot_info{slot="b",action="bailout",image_version="2026.11"} 1"#), "{text0}");
    assert!(
        text0.contains(r#"gse_update_state{state="unknown"} 1"#) && text0.contains("gse_config_errors 0"),
        "{text0}"
    );
    assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o644, "node_exporter's user reads it");
    promtool_accepts(&file);

    assert!(gsectl(&bus.address, &["health", "mark-bad", "lab share down"]).status.success());
    let red = wait_line(&file, r#"gse_health_status{status="red"} 1"#);
    assert!(red.contains(r#"gse_health_status{status="green"} 0"#), "{red}");
    promtool_accepts(&file);

    root.write("user-data/persistent/config.d/system/boot.conf", "primary = 7\n");
    wait_line(&file, "gse_config_errors 1");
    promtool_accepts(&file);
    // Nothing but the file itself is left in its directory (atomic replace).
    let names: Vec<String> = fs::read_dir(file.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into())
        .collect();
    assert_eq!(names, ["gse.prom"]);
}

/// A process inside `ns`, stopped on drop.
fn spawn_in(ns: &str, program: &Path, args: &[String], log: &Path) -> ProcessGuard {
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(log).unwrap())
        .stderr(fs::File::create(log.with_extension("err")).unwrap())
        .spawn()
        .unwrap();
    ProcessGuard { child: Some(child), name: program.display().to_string() }
}

fn in_ns(ns: &str, program: &Path, args: &[&str]) -> Output {
    Command::new("ip").args(["netns", "exec", ns]).arg(program).args(args).output().unwrap()
}

fn fleet(ns: &str, args: &[&str]) -> Output {
    in_ns(ns, &bin("gsectl"), &[&["fleet", "--prometheus", "http://127.0.0.1:9090"], args].concat())
}

/// RGB of the pixel at (x, y) of a PNG.
fn pixel(png_file: &Path, x: u32, y: u32) -> (u8, u8, u8) {
    let decoder = png::Decoder::new(fs::File::open(png_file).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bpp = info.color_type.samples();
    let i = (y as usize * info.line_size) + x as usize * bpp;
    (buf[i], buf[i + 1], buf[i + 2])
}

#[test]
fn prometheus_scrapes_the_room_and_gsectl_fleet_shows_it_red_first() {
    let prometheus = require_tool("prometheus", "prometheus");
    let exporter = require_tool("prometheus-node-exporter", "prometheus-node-exporter");
    let chromium = require_tool("chromium", "chromium");
    let work = tempfile::tempdir().unwrap();
    let ns = Netns::add(&format!("gse-prom-{}", std::process::id()));
    gse_tests::netns::ip(&["-n", &ns.0, "link", "set", "lo", "up"]);

    // Two clients, each its own gsed (own bus, own root) and node_exporter; a third
    // machine is switched off (nothing listens on its port).
    let mut guards = Vec::new();
    let mut keep = Vec::new();
    for (i, port) in [(1, 9101), (2, 9102)] {
        let (bus, root) = (TestBus::start(), TestRoot::new());
        root.health_conf("");
        guards.push(start_gsed(&bus, &root, &format!("lab{i}")));
        let textdir = root.path().join(PROM).parent().unwrap().to_owned();
        wait_for(Duration::from_secs(15), "the metrics file", || textdir.join("gse.prom").exists().then_some(()));
        if i == 2 {
            assert!(gsectl(&bus.address, &["health", "mark-bad", "lab share down"]).status.success());
        }
        let args = vec![
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--collector.disable-defaults".into(),
            "--collector.textfile".into(),
            format!("--collector.textfile.directory={}", textdir.display()),
        ];
        guards.push(spawn_in(&ns.0, &exporter, &args, &work.path().join(format!("exporter{i}.log"))));
        keep.push((bus, root));
    }
    let rules = repo().join("contrib/prometheus/gse-rules.yml");
    let config = work.path().join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: ['{}']\nscrape_configs:\n  - job_name: gse-room\n    static_configs:\n      - {{targets: ['127.0.0.1:9101'], labels: {{instance: lab-01}}}}\n      - {{targets: ['127.0.0.1:9102'], labels: {{instance: lab-02}}}}\n      - {{targets: ['127.0.0.1:9109'], labels: {{instance: lab-03}}}}\n",
            rules.display()
        ),
    )
    .unwrap();
    let args = vec![
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", work.path().join("tsdb").display()),
        "--web.listen-address=127.0.0.1:9090".into(),
    ];
    guards.push(spawn_in(&ns.0, &prometheus, &args, &work.path().join("prometheus.log")));

    // Wait until Prometheus has scraped all three (the red one included).
    let json = wait_for(Duration::from_secs(60), "prometheus to see the room", || {
        let out = fleet(&ns.0, &["--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let healths: Vec<String> =
            v.as_array()?.iter().map(|m| m["health"].as_str().unwrap_or("").to_owned()).collect();
        (healths == ["red", "down", "green"]).then_some(v)
    });
    let names: Vec<&str> = json.as_array().unwrap().iter().map(|m| m["machine"].as_str().unwrap()).collect();
    assert_eq!(names, ["lab-02", "lab-03", "lab-01"], "red first, then the one that is down");
    assert_eq!(json[0]["slot"], "a", "{json}");

    let table = text(&fleet(&ns.0, &[]).stdout);
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].starts_with("MACHINE") && rows[1].starts_with("lab-02") && rows[1].contains("red"), "{table}");

    // The shipped alert rule sees the red machine.
    let alerts = wait_for(Duration::from_secs(30), "GseMachineRed pending", || {
        let q = "http://127.0.0.1:9090/api/v1/query?query=ALERTS%7Balertname%3D%22GseMachineRed%22%7D";
        let out = in_ns(&ns.0, &require_tool("curl", "curl"), &["-sf", q]);
        let t = text(&out.stdout);
        t.contains("lab-02").then_some(t)
    });
    assert!(!alerts.contains("lab-01"), "{alerts}");

    // The page an administrator looks at in the morning.
    let page = work.path().join("room.html");
    assert!(fleet(&ns.0, &["--html", page.to_str().unwrap()]).status.success());
    let html = fs::read_to_string(&page).unwrap();
    assert_eq!(html.matches("<div class=\"m ").count(), 3, "one cell per machine");
    assert!(!html.contains("http://") && !html.contains("https://"), "self-contained");
    let shot = work.path().join("room.png");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--window-size=800,600",
        ])
        .arg(format!("--user-data-dir={}", work.path().join("chromium").display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(shot.exists(), "chromium made no screenshot: {}", text(&out.stderr));
    println!("room page screenshot: {}", keep_screenshot(&shot).display());
    // Cells are 180x100 from (16, 64), 188 apart: red, grey (down), green.
    let (r, g, b) = pixel(&shot, 20, 68);
    assert!(r > 180 && g < 90 && b < 90, "the first cell is red: {:?}", (r, g, b));
    let (r, g, b) = pixel(&shot, 16 + 188 + 4, 68);
    assert!(r.abs_diff(g) < 10 && g.abs_diff(b) < 10 && r < 120, "the second is grey (down): {:?}", (r, g, b));
    let (r, g, b) = pixel(&shot, 16 + 2 * 188 + 4, 68);
    assert!(g > 120 && r < 90 && b < 120, "the third is green: {:?}", (r, g, b));
    drop(guards);
}

/// Keeps the screenshot under target/ for a person to look at.
fn keep_screenshot(shot: &Path) -> PathBuf {
    let dest = gse_tests::profile_dir().join("room.png");
    let _ = fs::copy(shot, &dest);
    dest
}

#[test]
fn fleet_says_in_one_line_when_prometheus_is_away_or_talks_garbage() {
    let port = gse_tests::http::free_port("127.0.0.1");
    let out = Command::new(bin("gsectl"))
        .args(["fleet", "--prometheus", &format!("http://127.0.0.1:{port}"), "--timeout-secs", "3"])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("gsectl: cannot query Prometheus at") && err.lines().count() == 1, "{err}");

    let junk = BadServer::answering("<html>this is not Prometheus</html>");
    let out = Command::new(bin("gsectl")).args(["fleet", "--prometheus", &junk.url()]).output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not a query result") && err.lines().count() == 1, "{err}");

    let out = Command::new(bin("gsectl")).args(["fleet", "--prometheus", "ftp://x"]).output().unwrap();
    assert!(text(&out.stderr).contains("--prometheus: 'ftp://x' must be an http:// URL"));
}

#[test]
fn the_shipped_prometheus_files_pass_promtool_and_the_dashboard_uses_real_metrics() {
    let promtool = require_tool("promtool", "prometheus");
    let dir = repo().join("contrib/prometheus");
    let out = Command::new(&promtool).args(["check", "rules"]).arg(dir.join("gse-rules.yml")).output().unwrap();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let out = Command::new(&promtool).args(["check", "config"]).arg(dir.join("prometheus.yml")).output().unwrap();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let dash: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(repo().join("contrib/grafana/gse-room.json")).unwrap()).unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 5);
    let known = gsed::metrics::render(&Default::default());
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| w.starts_with("gse_")) {
            assert!(known.contains(&format!("# TYPE {word} ")), "the dashboard uses an unknown metric {word}");
        }
    }
}
