//! `controller/services/default-runlevel`: the services of OpenRC's default
//! runlevel on every client, one name a line (`#` starts a comment). Early boot
//! applies it to the client's RAM-backed /etc with [`apply`].

use std::{
    fs, io,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::ConfigError;

/// Parses the list; errors name the file and line.
pub fn parse(path: &Path, text: &str) -> Result<Vec<String>, Vec<ConfigError>> {
    let mut services = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let err = |message: String| ConfigError { file: path.to_owned(), line: Some(i + 1), column: None, message };
        if !line.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) || line.starts_with('.') {
            errors.push(err(format!("'{line}' is not a service name (one name a line: letters, digits, - _ . @)")));
        } else if services.iter().any(|s| s == line) {
            errors.push(err(format!("'{line}' is listed twice")));
        } else {
            services.push(line.to_owned());
        }
    }
    if errors.is_empty() { Ok(services) } else { Err(errors) }
}

/// What [`apply`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Listed, but the image has no `/etc/init.d/NAME`: skipped.
    pub missing: Vec<String>,
}

/// Makes `<etc>/runlevels/default` hold exactly `services` (those that exist in
/// `<etc>/init.d`), as symlinks to `/etc/init.d/NAME` the way `rc-update` makes them.
pub fn apply(etc: &Path, services: &[String]) -> io::Result<Applied> {
    let dir = etc.join("runlevels/default");
    fs::create_dir_all(&dir)?;
    let mut applied = Applied::default();
    let present: Vec<PathBuf> = fs::read_dir(&dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    for p in present {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !services.contains(&name) {
            fs::remove_file(&p)?;
            applied.removed.push(name);
        }
    }
    for s in services {
        if !etc.join("init.d").join(s).exists() {
            applied.missing.push(s.clone());
            continue;
        }
        let link = dir.join(s);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("/etc/init.d").join(s), &link)?;
            applied.added.push(s.clone());
        }
    }
    applied.removed.sort();
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reports_bad_lines_with_numbers() {
        let p = Path::new("controller/services/default-runlevel");
        assert_eq!(parse(p, "# lab\ndbus\n\ngsed  # ours\n").unwrap(), ["dbus", "gsed"]);
        let errs = parse(p, "dbus\nsshd now\ndbus\n").unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!((errs[0].line, errs[1].line), (Some(2), Some(3)));
        assert!(errs[0].message.contains("'sshd now'"));
    }

    #[test]
    fn apply_makes_the_runlevel_exactly_the_list() {
        let d = tempfile::tempdir().unwrap();
        let etc = d.path().join("etc");
        for s in ["dbus", "gsed", "sshd", "cupsd"] {
            fs::create_dir_all(etc.join("init.d")).unwrap();
            fs::write(etc.join("init.d").join(s), "#!/sbin/openrc-run\n").unwrap();
        }
        fs::create_dir_all(etc.join("runlevels/default")).unwrap();
        symlink("/etc/init.d/cupsd", etc.join("runlevels/default/cupsd")).unwrap();
        symlink("/etc/init.d/dbus", etc.join("runlevels/default/dbus")).unwrap();

        let list: Vec<String> = ["dbus", "gsed", "sshd", "nfsclient"].map(String::from).to_vec();
        let applied = apply(&etc, &list).unwrap();
        assert_eq!(applied.added, ["gsed", "sshd"]);
        assert_eq!(applied.removed, ["cupsd"]);
        assert_eq!(applied.missing, ["nfsclient"]);
        let mut now: Vec<_> = fs::read_dir(etc.join("runlevels/default"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        now.sort();
        assert_eq!(now, ["dbus", "gsed", "sshd"]);
        assert_eq!(fs::read_link(etc.join("runlevels/default/gsed")).unwrap(), Path::new("/etc/init.d/gsed"));
        assert_eq!(apply(&etc, &list).unwrap(), Applied { missing: vec!["nfsclient".into()], ..Default::default() });
    }
}
