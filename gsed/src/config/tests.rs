use std::fs;

use super::*;

struct Tree(tempfile::TempDir);

impl Tree {
    fn new() -> Tree {
        Tree(tempfile::tempdir().unwrap())
    }
    fn put(&self, rel: &str, text: &str) -> &Self {
        let p = self.0.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
        self
    }
    fn path(&self) -> PathBuf {
        self.0.path().to_owned()
    }
}

#[test]
fn controller_file_wins_key_by_key_and_lower_values_survive() {
    let image = Tree::new();
    image.put("system/boot.conf", "primary = \"a\"\n[health]\nmax_attempts = 3\ndeadline = \"2m\"\n");
    let synced = Tree::new();
    synced.put("system/boot.conf", "[health]\nmax_attempts = 5\non_failure = \"repair\"\n");
    synced.put("controller/cboot.conf", "# lab override\n[health]\nmax_attempts = 7\n");

    let l = load(&[image.path(), synced.path()]).unwrap();
    let h = &l.settings.boot.health;
    assert_eq!(h.max_attempts, 7, "the c file wins");
    assert_eq!(h.on_failure, OnFailure::Repair, "synced system value survives");
    assert_eq!(h.deadline, Duration::secs(120), "image value survives");
    assert_eq!(h.check_timeout, Duration::secs(30), "built-in default fills the rest");

    let origin = |k: &str| l.origins.get(k).map(|o| o.to_string()).unwrap_or_default();
    assert_eq!(
        origin("boot.health.max_attempts"),
        format!("{}:3", synced.path().join("controller/cboot.conf").display())
    );
    assert_eq!(origin("boot.health.on_failure"), format!("{}:3", synced.path().join("system/boot.conf").display()));
    assert_eq!(origin("boot.health.deadline"), format!("{}:4", image.path().join("system/boot.conf").display()));
    assert_eq!(l.get("boot.health.max_attempts"), Some(toml::Value::Integer(7)));
}

#[test]
fn a_file_every_tree_carries_alike_loads_as_the_top_one() {
    // Early boot's three trees usually hold the same file: it is parsed once,
    // and what it sets still comes from the highest tree.
    let text = "primary = \"a\"\n[health]\nmax_attempts = 4\n";
    let trees = [Tree::new(), Tree::new(), Tree::new()];
    for t in &trees {
        t.put("system/boot.conf", text);
    }
    trees[1].put("system/network.conf", "wait = \"5s\"\n");
    let paths: Vec<PathBuf> = trees.iter().map(Tree::path).collect();
    let l = load(&paths).unwrap();
    assert_eq!(l.settings.boot.health.max_attempts, 4);
    let origin = |k: &str| l.origins.get(k).map(|o| o.to_string()).unwrap_or_default();
    assert_eq!(origin("boot.health.max_attempts"), format!("{}:3", paths[2].join("system/boot.conf").display()));
    assert_eq!(origin("network.wait"), format!("{}:1", paths[1].join("system/network.conf").display()));

    // A refused file is refused in every tree that carries it, each named.
    let bad = "[health]\nmax_attempts = \"x\"\n";
    trees[0].put("system/boot.conf", bad);
    trees[2].put("system/boot.conf", bad);
    let errs = load(&paths).unwrap_err();
    for t in [&paths[0], &paths[2]] {
        let file = t.join("system/boot.conf");
        assert!(
            errs.iter().any(|e| e.file == file && e.line == Some(2) && e.message.contains("invalid type: string")),
            "{errs:#?}"
        );
    }
    assert_eq!(errs.len(), 2, "{errs:#?}");
}

#[test]
fn errors_name_file_line_column_and_field() {
    let t = Tree::new();
    t.put("system/boot.conf", "primary = \"a\"\n[health]\nmax_atempts = 3\n");
    t.put("controller/tmpfs.conf", "[mount.\"/tmp\"]\nsize = 12\n");
    t.put("system/network.conf", "[interface.eth0]\nmethod = \"static\"\naddress = \"192.0.2.300/24\"\n");
    t.put("controller/update.chk.conf", "check_interval = \"forever\"\n");
    fs::create_dir_all(t.path().join("controller/drives.conf")).unwrap();
    t.put("controller/services/default-runlevel", "dbus\nbad name\n");

    let errs = load(&[t.path()]).unwrap_err();
    let msgs: Vec<String> = errs.iter().map(|e| e.to_string().replace(&t.path().display().to_string(), "")).collect();
    let has = |needle: &str| assert!(msgs.iter().any(|m| m.contains(needle)), "no {needle:?} in {msgs:#?}");
    has("/system/boot.conf:3:1: unknown field `max_atempts`, expected one of");
    has("/controller/tmpfs.conf:2:8: invalid type: integer `12`, expected a string");
    has("/system/network.conf:3: interface.eth0.address: '192.0.2.300' is not an IPv4 address");
    has("/controller/update.chk.conf:1:18: 'forever' is not a duration");
    has("/controller/drives.conf: is a directory, expected a file");
    has("/controller/services/default-runlevel:2: 'bad name' is not a service name");
    assert_eq!(errs.len(), 6, "{msgs:#?}");
}

#[test]
fn out_of_range_and_cross_field_rules() {
    let t = Tree::new();
    t.put("system/boot.conf", "primary = \"c\"\n[health]\nmax_attempts = 0\ncheck_timeout = \"10m\"\n");
    t.put("system/network.conf", "[interface.eth0]\nmethod = \"dhcp\"\ngateway = \"192.0.2.1\"\n");
    let errs = load(&[t.path()]).unwrap_err();
    let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert!(msgs.iter().any(|m| m.contains("boot.conf:1: primary: slot 'c' is not defined")), "{msgs:#?}");
    assert!(
        msgs.iter().any(|m| m.contains("boot.conf:3: health.max_attempts: 0 is out of range: expected 1 to 100")),
        "{msgs:#?}"
    );
    assert!(msgs.iter().any(|m| m.contains("health.check_timeout: 10m is longer than the deadline 5m")), "{msgs:#?}");
    assert!(
        msgs.iter().any(|m| m.contains("network.conf:3: interface.eth0.gateway: only applies to method = \"static\"")),
        "{msgs:#?}"
    );
}

#[test]
fn empty_tree_gives_defaults_and_runlevel_is_left_alone() {
    let t = Tree::new();
    let l = load(&[t.path()]).unwrap();
    assert_eq!(l.settings, Settings::default());
    assert_eq!(l.settings.default_runlevel, None);
}

#[test]
fn check_tree_flags_unknown_files_and_bad_examples() {
    let t = Tree::new();
    t.put("system/boot.cnf.conf", "primary = \"a\"\n");
    t.put("system/examples/network.static.conf", "[interface.eth0]\nmethod = \"static\"\n");
    t.put("system/examples/whatever.conf", "x = 1\n");
    t.put("system/examples/README", "notes");
    let errs = check_tree(&t.path()).unwrap_err();
    let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(msgs.len(), 3, "{msgs:#?}");
    assert!(msgs.iter().any(|m| m.contains("boot.cnf.conf: unknown file")));
    assert!(msgs.iter().any(|m| m.contains("network.static.conf") && m.contains("needs an address")));
    assert!(msgs.iter().any(|m| m.contains("whatever.conf: example does not name the file")));
}

#[test]
fn flatten_lists_leaves_with_origins() {
    let t = Tree::new();
    t.put("controller/tmpfs.conf", "[mount.\"/etc\"]\nsize = \"64M\"\n[mount.\"/var\"]\nsize = \"1G\"\n[mount.\"/tmp\"]\nsize = \"10%\"\nmode = \"1777\"\n");
    let l = load(&[t.path()]).unwrap();
    let rows = l.flatten(Some("tmpfs.mount.\"/tmp\""));
    let keys: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(keys, ["tmpfs.mount.\"/tmp\".mode", "tmpfs.mount.\"/tmp\".size"]);
    assert_eq!(rows[0].1, "\"1777\"");
    assert_eq!(rows[0].2.as_ref().unwrap().line, Some(7));
}

#[test]
fn servers_need_a_key_and_plain_http() {
    let t = Tree::new();
    t.put("controller/server/server.info.conf", "[[server]]\nname = \"main\"\nurl = \"https://gse.lab.example\"\n");
    let msgs: Vec<String> = load(&[t.path()]).unwrap_err().iter().map(|e| e.to_string()).collect();
    assert!(msgs.iter().any(|m| m.contains("public_key: is required when servers are listed")), "{msgs:#?}");
    assert!(msgs.iter().any(|m| m.contains("server.0.url") && m.contains("use http://")), "{msgs:#?}");
}

#[test]
fn update_keys_are_checked_and_named() {
    for (text, needle) in [
        ("max_rate = \"1K\"\n", "max_rate: must be at least 64K"),
        ("max_rate = \"fast\"\n", "'fast' is not a size"),
        ("reboot = \"window\"\n", "window: reboot = \"window\" needs a window"),
        ("reboot = \"window\"\nwindow = \"2:00-5:00\"\n", "'2:00-5:00' is not a window"),
        ("reboot = \"sometimes\"\n", "unknown variant `sometimes`"),
        ("prompt_at_boot = \"yes\"\n", "expected a boolean"),
    ] {
        let t = Tree::new();
        t.put("controller/update.chk.conf", text);
        let errs = load(&[t.path()]).unwrap_err();
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            msgs.iter().any(|m| m.contains("update.chk.conf") && m.contains(needle)),
            "{text:?}: no {needle:?} in {msgs:#?}"
        );
    }
    let t = Tree::new();
    t.put(
        "controller/update.chk.conf",
        "policy = \"auto\"\nmax_rate = \"20M\"\nreboot = \"window\"\nwindow = \"22:00-06:00\"\nprompt_at_boot = true\n",
    );
    let u = load(&[t.path()]).unwrap().settings.update;
    assert_eq!((u.max_rate.map(|r| r.0), u.reboot, u.prompt_at_boot), (Some(20 << 20), Reboot::Window, true));
}

#[test]
fn read_only_directories_must_lie_below_a_populated_mount() {
    let t = Tree::new();
    t.put(
        "controller/tmpfs.conf",
        "[mount.\"/etc\"]\nsize = \"64M\"\n[mount.\"/var\"]\nsize = \"1G\"\nread_only = [\"/var/db/pkg\", \"/usr/lib\", \"/var/../etc\"]\n[mount.\"/tmp\"]\nsize = \"10%\"\nread_only = [\"/tmp/x\"]\n",
    );
    let errs = load(&[t.path()]).unwrap_err();
    let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let has = |needle: &str| assert!(msgs.iter().any(|m| m.contains(needle)), "no {needle:?} in {msgs:#?}");
    has("mount.\"/var\".read_only: '/usr/lib' must be an absolute directory below /var");
    has("mount.\"/var\".read_only: '/var/../etc' must be an absolute directory below /var");
    has("mount.\"/tmp\".read_only: only /etc and /var are filled from the image");
    assert_eq!(errs.len(), 3, "{msgs:#?}");

    t.put("controller/tmpfs.conf", "[mount.\"/etc\"]\nsize = \"64M\"\n[mount.\"/var\"]\nsize = \"1G\"\nread_only = [\"/var/lib\", \"/var/lib/dpkg\"]\n[mount.\"/tmp\"]\nsize = \"10%\"\n");
    let errs = load(&[t.path()]).unwrap_err();
    let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert!(msgs.iter().any(|m| m.contains("read_only: '/var/lib/dpkg' is already kept by '/var/lib'")), "{msgs:#?}");
    assert_eq!(errs.len(), 1, "{msgs:#?}");

    t.put("controller/tmpfs.conf", "[mount.\"/etc\"]\nsize = \"64M\"\n[mount.\"/var\"]\nsize = \"1G\"\nread_only = [\"/var/db/pkg\"]\n[mount.\"/tmp\"]\nsize = \"10%\"\n");
    let s = load(&[t.path()]).unwrap();
    assert_eq!(s.settings.tmpfs.mount["/var"].read_only, ["/var/db/pkg"]);
}

#[test]
fn early_boot_never_writes_into_a_read_only_directory_of_etc() {
    let t = Tree::new();
    let tmpfs = "[mount.\"/etc\"]\nsize = \"64M\"\nread_only = [\"/etc/ssl\", \"/etc/runlevels\"]\n\
                 [mount.\"/var\"]\nsize = \"1G\"\n[mount.\"/tmp\"]\nsize = \"10%\"\n";
    t.put("controller/tmpfs.conf", tmpfs);
    t.put("system/etc.conf", "remove = [\"/etc/motd\"]\n[file.\"/etc/ssl/lab.pem\"]\ncontent = \"x\"\n");
    t.put("controller/services/default-runlevel", "sshd\n");
    let errs = load(&[t.path()]).unwrap_err();
    let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let has = |needle: &str| assert!(msgs.iter().any(|m| m.contains(needle)), "no {needle:?} in {msgs:#?}");
    has(
        "controller/tmpfs.conf:3: mount.\"/etc\".read_only: '/etc/ssl' cannot stay read-only: etc.conf writes /etc/ssl/lab.pem",
    );
    has(
        "mount.\"/etc\".read_only: '/etc/runlevels' cannot stay read-only: controller/services/default-runlevel writes /etc/runlevels/default",
    );
    assert_eq!(errs.len(), 2, "the removal of /etc/motd is no conflict: {msgs:#?}");

    // Nothing written there: the same directories are fine.
    t.put("system/etc.conf", "[file.\"/etc/ssl2/lab.pem\"]\ncontent = \"x\"\n");
    std::fs::remove_file(t.path().join("controller/services/default-runlevel")).unwrap();
    assert_eq!(load(&[t.path()]).unwrap().settings.tmpfs.mount["/etc"].read_only, ["/etc/ssl", "/etc/runlevels"]);
}
