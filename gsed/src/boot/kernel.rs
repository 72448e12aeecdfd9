//! Each slot boots the kernel of its own image (DESIGN §12).
//!
//! An image carries its kernel as Gentoo installs one: `boot/vmlinuz-RELEASE`,
//! its modules under `lib/modules/RELEASE/` (or `usr/lib/modules/RELEASE/` on a
//! merged /usr), and the GSE initramfs for that kernel,
//! `boot/gse-initramfs-RELEASE.img`, which `gsectl image build` adds.
//!
//! Early boot runs on whatever kernel the boot loader (or a USB stick, or PXE)
//! started. Once it has decided the slot (and counted the boot), a slot whose
//! kernel is another one is started through kexec: the decision is written
//! down as a [`Handoff`] named on the new kernel's command line, and the early
//! boot under that kernel carries it out instead of deciding again. A new kernel
//! that panics therefore counts as a boot that never reached gsed, and the
//! next power-on rolls back like any red trial.

use std::{fs, io, os::fd::AsRawFd, path::Path};

use gse_dbus::boot::BootRecord;
use serde::{Deserialize, Serialize};

use crate::{fsutil::write_atomic, paths::Paths};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("the image carries several kernels ({}); it must carry exactly one", .0.join(", "))]
    Several(Vec<String>),
    #[error(
        "kernel boot/vmlinuz-{release} has no modules directory lib/modules/{release}/ (modules.dep){}",
        found_modules(.found)
    )]
    NoModules { release: String, found: Vec<String> },
    #[error("kernel {release} has no GSE initramfs boot/gse-initramfs-{release}.img (`gsectl image build` adds it)")]
    NoInitramfs { release: String },
    #[error("boot/vmlinuz-{named} is kernel {inside} (its own header says so)")]
    Misnamed { named: String, inside: String },
}

fn found_modules(found: &[String]) -> String {
    if found.is_empty() { String::new() } else { format!("; the image has modules for {}", found.join(", ")) }
}

/// The kernel an image (or a slot) carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub release: String,
}

impl Kernel {
    pub fn vmlinuz(&self) -> String {
        format!("boot/vmlinuz-{}", self.release)
    }
    pub fn initramfs(&self) -> String {
        format!("boot/gse-initramfs-{}.img", self.release)
    }
}

/// The kernel named by an image's member paths (relative, `./` allowed):
/// none, or exactly one whose modules are there too. With `need_initramfs`,
/// its GSE initramfs must be there as well.
pub fn from_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
    need_initramfs: bool,
) -> Result<Option<Kernel>, KernelError> {
    let mut kernels = Vec::new();
    let mut modules = std::collections::BTreeSet::new();
    let mut initramfs = std::collections::BTreeSet::new();
    for name in names {
        let name = name.trim_start_matches("./").trim_end_matches('/');
        if let Some(r) = name.strip_prefix("boot/vmlinuz-").filter(|r| !r.is_empty() && !r.contains('/')) {
            kernels.push(r.to_owned());
        } else if let Some(r) = name.strip_prefix("boot/gse-initramfs-").and_then(|r| r.strip_suffix(".img")) {
            initramfs.insert(r.to_owned());
        } else if let Some(r) = name
            .strip_prefix("lib/modules/")
            .or_else(|| name.strip_prefix("usr/lib/modules/"))
            .and_then(|rest| rest.strip_suffix("/modules.dep"))
            .filter(|r| !r.contains('/'))
        {
            modules.insert(r.to_owned());
        }
    }
    kernels.sort();
    kernels.dedup();
    let release = match kernels.len() {
        0 => return Ok(None),
        1 => kernels.remove(0),
        _ => return Err(KernelError::Several(kernels)),
    };
    if !modules.contains(&release) {
        return Err(KernelError::NoModules { release, found: modules.into_iter().collect() });
    }
    if need_initramfs && !initramfs.contains(&release) {
        return Err(KernelError::NoInitramfs { release });
    }
    Ok(Some(Kernel { release }))
}

/// The kernel of the tree at `root` (a mounted slot, or an image being built),
/// checked as [`from_names`] does and against the release its bzImage header
/// names.
pub fn find(root: &Path, need_initramfs: bool) -> Result<Option<Kernel>, KernelError> {
    let list = |dir: &str| -> Vec<String> {
        fs::read_dir(root.join(dir))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| format!("{dir}/{}", e.file_name().to_string_lossy()))
            .collect()
    };
    let mut names = list("boot");
    for dir in ["lib/modules", "usr/lib/modules"] {
        // lib is a link to usr/lib on a merged /usr: counted once, as usr/lib.
        if dir == "lib/modules" && fs::symlink_metadata(root.join("lib")).is_ok_and(|m| m.file_type().is_symlink()) {
            continue;
        }
        names.extend(
            list(dir)
                .into_iter()
                .filter(|d| root.join(d).join("modules.dep").is_file())
                .map(|d| format!("{d}/modules.dep")),
        );
    }
    let Some(k) = from_names(names.iter().map(String::as_str), need_initramfs)? else { return Ok(None) };
    if let Some(inside) = header_release(&root.join(k.vmlinuz())).filter(|r| *r != k.release) {
        return Err(KernelError::Misnamed { named: k.release, inside });
    }
    Ok(Some(k))
}

/// The release a bzImage names in its setup header (`kernel_version`), if
/// the file is one.
pub fn header_release(vmlinuz: &Path) -> Option<String> {
    // The string's offset is a u16 counted from 0x200.
    let mut head = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(fs::File::open(vmlinuz).ok()?, 0x10200), &mut head).ok()?;
    if head.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let at = 0x200 + u16::from_le_bytes([*head.get(0x20e)?, *head.get(0x20f)?]) as usize;
    let text = head.get(at..)?;
    let end = text.iter().position(|&b| b == 0 || b == b' ')?;
    String::from_utf8(text[..end].to_vec()).ok()
}

/// The release of the running kernel (under `--root`, the file standing in for it).
pub fn running_release(paths: &Paths) -> String {
    fs::read_to_string(paths.kernel_release()).map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// What early boot decided before it started the slot's own kernel: the early
/// boot under that kernel carries it out. Named by a nonce on the new kernel's
/// command line (`gse.handoff=`), so a stale file is never taken for this boot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handoff {
    pub nonce: String,
    /// The kernel release that is to carry it out.
    pub release: String,
    /// The decision as it will appear in boot.json.
    pub record: BootRecord,
}

/// The command-line word that names a handoff.
pub const CMDLINE_KEY: &str = "gse.handoff";

impl Handoff {
    pub fn save(&self, paths: &Paths) -> io::Result<()> {
        write_atomic(&paths.kexec_handoff(), &serde_json::to_vec_pretty(self).expect("serialises"), 0o600)
    }

    /// The handoff this boot was started with, if its command line names one
    /// and it was meant for the running kernel. It is taken once: the file goes.
    pub fn take(paths: &Paths) -> Option<Handoff> {
        let cmdline = fs::read_to_string(paths.kernel_cmdline()).unwrap_or_default();
        let nonce = cmdline.split_whitespace().find_map(|w| w.strip_prefix(CMDLINE_KEY)?.strip_prefix('='))?;
        let path = paths.kexec_handoff();
        let found = fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Handoff>(&b).ok());
        let _ = fs::remove_file(&path);
        let running = running_release(paths);
        match found.filter(|h| h.nonce == nonce) {
            Some(h) if h.release != running => {
                tracing::warn!(wanted = %h.release, %running, "a handoff for another kernel; deciding again");
                None
            }
            Some(h) => Some(h),
            None => {
                tracing::warn!(%nonce, "the handoff the command line names is missing, unreadable or another boot's; deciding again");
                None
            }
        }
    }

    /// Removes a handoff left by an earlier boot that never came to take it.
    pub fn clear(paths: &Paths) {
        let _ = fs::remove_file(paths.kexec_handoff());
    }
}

/// The words of `cmdline` that do not start with any of `drop`.
pub fn cmdline_without<'a>(cmdline: &'a str, drop: &'a [&str]) -> impl Iterator<Item = &'a str> {
    cmdline.split_whitespace().filter(move |w| !drop.iter().any(|d| w.starts_with(d)))
}

/// What a boot loader adds to the command line of the kernel it starts.
pub const LOADER_WORDS: [&str; 2] = ["BOOT_IMAGE=", "initrd="];

/// The command line for the slot's kernel: this boot's, with the handoff's
/// nonce in place of any earlier one (and without the boot loader's words).
pub fn next_cmdline(current: &str, nonce: &str) -> String {
    let key = format!("{CMDLINE_KEY}=");
    let drop = [key.as_str(), LOADER_WORDS[0], LOADER_WORDS[1]];
    let next = format!("{key}{nonce}");
    cmdline_without(current, &drop).chain([next.as_str()]).collect::<Vec<_>>().join(" ")
}

/// Loads `kernel` of the slot mounted at `root` with its GSE initramfs into
/// the running kernel (kexec_file_load), to be started by `gsectl boot kexec`
/// once the hook has released the disks.
pub fn load(root: &Path, kernel: &Kernel, cmdline: &str) -> io::Result<()> {
    let open = |rel: String| {
        let p = root.join(rel);
        fs::File::open(&p).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
    };
    let image = open(kernel.vmlinuz())?;
    let initrd = open(kernel.initramfs())?;
    let line = std::ffi::CString::new(cmdline)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the kernel command line"))?;
    let len = line.as_bytes_with_nul().len();
    // SAFETY: kexec_file_load reads two open file descriptors and a
    // NUL-terminated string of `len` bytes that outlives the call.
    let r = unsafe {
        libc::syscall(libc::SYS_kexec_file_load, image.as_raw_fd(), initrd.as_raw_fd(), len, line.as_ptr(), 0u64)
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("kexec_file_load of kernel {}: {e}", kernel.release)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&'static str]) -> Vec<&'static str> {
        list.to_vec()
    }

    #[test]
    fn an_image_carries_one_kernel_with_its_modules_and_initramfs() {
        let ok = names(&[
            "./boot/",
            "./boot/vmlinuz-6.1.0-9-amd64",
            "./boot/gse-initramfs-6.1.0-9-amd64.img",
            "./usr/lib/modules/6.1.0-9-amd64/modules.dep",
        ]);
        assert_eq!(from_names(ok.clone(), true), Ok(Some(Kernel { release: "6.1.0-9-amd64".into() })));
        assert_eq!(from_names(names(&["etc/passwd", "boot/grub/grub.cfg"]), true), Ok(None));
        assert_eq!(
            from_names(names(&["boot/vmlinuz-6.2", "lib/modules/6.1/modules.dep"]), false),
            Err(KernelError::NoModules { release: "6.2".into(), found: vec!["6.1".into()] })
        );
        assert_eq!(
            from_names(names(&["boot/vmlinuz-6.1", "lib/modules/6.1/modules.dep"]), true),
            Err(KernelError::NoInitramfs { release: "6.1".into() })
        );
        assert!(matches!(
            from_names(names(&["boot/vmlinuz-6.1", "boot/vmlinuz-6.2", "lib/modules/6.1/modules.dep"]), false),
            Err(KernelError::Several(v)) if v == ["6.1", "6.2"]
        ));
        let msg = from_names(names(&["boot/vmlinuz-6.2", "lib/modules/6.1/modules.dep"]), false).unwrap_err();
        assert!(msg.to_string().contains("lib/modules/6.2/") && msg.to_string().contains("6.1"), "{msg}");
    }

    #[test]
    fn a_tree_is_checked_against_the_bzimage_header() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("boot")).unwrap();
        fs::create_dir_all(d.path().join("usr/lib/modules/6.1.0-9-amd64")).unwrap();
        std::os::unix::fs::symlink("usr/lib", d.path().join("lib")).unwrap();
        fs::write(d.path().join("usr/lib/modules/6.1.0-9-amd64/modules.dep"), "").unwrap();
        fs::write(d.path().join("boot/gse-initramfs-6.1.0-9-amd64.img"), "").unwrap();
        // A bzImage's setup header: "HdrS" at 0x202, the version string's offset at 0x20e.
        let mut bz = vec![0u8; 0x800];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x20e..0x210].copy_from_slice(&0x400u16.to_le_bytes());
        let version = b"6.1.0-8-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        bz[0x600..0x600 + version.len()].copy_from_slice(version);
        fs::write(d.path().join("boot/vmlinuz-6.1.0-9-amd64"), &bz).unwrap();
        assert_eq!(
            find(d.path(), true),
            Err(KernelError::Misnamed { named: "6.1.0-9-amd64".into(), inside: "6.1.0-8-amd64".into() })
        );
        bz[0x600..0x600 + version.len()].copy_from_slice(&version.map(|b| if b == b'8' { b'9' } else { b }));
        fs::write(d.path().join("boot/vmlinuz-6.1.0-9-amd64"), &bz).unwrap();
        assert_eq!(find(d.path(), true), Ok(Some(Kernel { release: "6.1.0-9-amd64".into() })));
    }

    #[test]
    fn the_next_kernel_gets_this_command_line_with_one_handoff() {
        assert_eq!(
            next_cmdline("BOOT_IMAGE=/vmlinuz console=ttyS0 gse.handoff=old quiet", "n2"),
            "console=ttyS0 quiet gse.handoff=n2"
        );
    }

    #[test]
    fn a_handoff_is_taken_once_and_only_by_the_kernel_and_boot_it_names() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::new(d.path());
        fs::create_dir_all(d.path().join("proc/sys/kernel")).unwrap();
        fs::write(paths.kernel_release(), "6.2\n").unwrap();
        let h = Handoff { nonce: "n1".into(), release: "6.2".into(), record: BootRecord::default() };
        let cmdline = |s: &str| fs::write(paths.kernel_cmdline(), s).unwrap();
        // No word on the command line: a stale file is not this boot's.
        h.save(&paths).unwrap();
        cmdline("console=ttyS0");
        assert!(Handoff::take(&paths).is_none());
        cmdline("console=ttyS0 gse.handoff=n0");
        assert!(Handoff::take(&paths).is_none(), "another boot's nonce");
        assert!(!paths.kexec_handoff().exists(), "a file for no one is removed");
        h.save(&paths).unwrap();
        cmdline("console=ttyS0 gse.handoff=n1");
        fs::write(paths.kernel_release(), "6.1\n").unwrap();
        assert!(Handoff::take(&paths).is_none(), "meant for another kernel");
        h.save(&paths).unwrap();
        fs::write(paths.kernel_release(), "6.2\n").unwrap();
        assert_eq!(Handoff::take(&paths).map(|h| h.nonce), Some("n1".into()));
        assert!(Handoff::take(&paths).is_none(), "taken once");
    }
}
