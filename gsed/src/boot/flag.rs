//! The boot flag (DESIGN §5): a small signed file inside each slot's root,
//! `/.gse/bootflag`, written only by early boot.
//!
//! ```text
//! GSE-BOOTFLAG 1
//! slot=a
//! image_version=2026.11.1
//! healthy_cycles=12
//! last_good=1795651200
//! mac=<hex HMAC-SHA256 of every line above, newlines included>
//! ```
//!
//! The MAC is keyed with the machine key on the boot partition. It detects
//! corruption, accidental edits, naive tampering and a flag copied from the other
//! slot (the slot name is signed); it does not stop someone who is root already.

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::fsutil::write_atomic;

const MAGIC: &str = "GSE-BOOTFLAG 1";
pub const KEY_LEN: usize = 32;

/// Where a slot keeps its flag, relative to the slot's root.
pub fn flag_path(slot_root: &Path) -> PathBuf {
    slot_root.join(".gse/bootflag")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootFlag {
    pub slot: String,
    pub image_version: String,
    pub healthy_cycles: u64,
    /// Seconds since the epoch of the last healthy cycle (0: never).
    pub last_good: u64,
}

/// What reading a flag found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum FlagState {
    Valid { flag: BootFlag },
    Missing,
    Unreadable { why: String },
    Forged { why: String },
}

impl FlagState {
    pub fn is_valid(&self) -> bool {
        matches!(self, FlagState::Valid { .. })
    }

    pub fn name(&self) -> &'static str {
        match self {
            FlagState::Valid { .. } => "valid",
            FlagState::Missing => "missing",
            FlagState::Unreadable { .. } => "unreadable",
            FlagState::Forged { .. } => "forged",
        }
    }

    pub fn flag(&self) -> Option<&BootFlag> {
        match self {
            FlagState::Valid { flag } => Some(flag),
            _ => None,
        }
    }
}

impl fmt::Display for FlagState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlagState::Valid { flag } => write!(f, "valid ({} healthy cycles)", flag.healthy_cycles),
            FlagState::Missing => f.write_str("missing"),
            FlagState::Unreadable { why } => write!(f, "unreadable: {why}"),
            FlagState::Forged { why } => write!(f, "forged: {why}"),
        }
    }
}

/// The machine key that signs the flags.
#[derive(Clone)]
pub struct FlagKey([u8; KEY_LEN]);

impl fmt::Debug for FlagKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FlagKey(..)")
    }
}

impl FlagKey {
    pub fn load(path: &Path) -> io::Result<FlagKey> {
        let data = fs::read(path)?;
        let key: [u8; KEY_LEN] = data.as_slice().try_into().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{} is not a {KEY_LEN}-byte flag key", path.display()))
        })?;
        Ok(FlagKey(key))
    }

    /// The key as the running system finds it: on /boot when it is mounted,
    /// else the copy early boot left in /run/gse.
    pub fn load_running(paths: &crate::paths::Paths) -> io::Result<FlagKey> {
        FlagKey::load(&paths.flag_key()).or_else(|e| {
            FlagKey::load(&paths.run_flag_key()).map_err(|_| {
                io::Error::new(e.kind(), format!("{e}; /boot is not mounted and early boot left no copy in /run/gse"))
            })
        })
    }

    /// Creates a new random key at `path` (mode 0600); refuses to replace one.
    pub fn create(path: &Path) -> io::Result<FlagKey> {
        if path.exists() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists already", path.display())));
        }
        let mut key = [0u8; KEY_LEN];
        io::Read::read_exact(&mut fs::File::open("/dev/urandom")?, &mut key)?;
        write_atomic(path, &key, 0o600)?;
        Ok(FlagKey(key))
    }

    pub fn from_bytes(key: [u8; KEY_LEN]) -> FlagKey {
        FlagKey(key)
    }

    fn mac(&self, body: &str) -> String {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(body.as_bytes());
        m.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl BootFlag {
    fn body(&self) -> String {
        format!(
            "{MAGIC}\nslot={}\nimage_version={}\nhealthy_cycles={}\nlast_good={}\n",
            self.slot, self.image_version, self.healthy_cycles, self.last_good
        )
    }

    pub fn encode(&self, key: &FlagKey) -> String {
        let body = self.body();
        format!("{body}mac={}\n", key.mac(&body))
    }

    /// Writes the flag into a slot root mounted read-write.
    /// Creating `.gse/` would touch the slot root's mtime; it is put back so that
    /// the root still looks exactly like the image (two installed slots compare equal).
    pub fn write(&self, slot_root: &Path, key: &FlagKey) -> io::Result<()> {
        let before = fs::metadata(slot_root)?;
        write_atomic(&flag_path(slot_root), self.encode(key).as_bytes(), 0o644)?;
        let times = fs::FileTimes::new().set_accessed(before.accessed()?).set_modified(before.modified()?);
        fs::File::open(slot_root)?.set_times(times)
    }
}

/// Reads and verifies the flag of `slot` in a mounted slot root.
pub fn read(slot_root: &Path, slot: &str, key: &FlagKey) -> FlagState {
    let path = flag_path(slot_root);
    let data = match fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return FlagState::Missing,
        Err(e) => return FlagState::Unreadable { why: e.to_string() },
    };
    verify(&data, slot, key)
}

/// Verifies flag bytes: well-formed (else unreadable), MAC and slot (else forged).
pub fn verify(data: &[u8], slot: &str, key: &FlagKey) -> FlagState {
    let unreadable = |why: &str| FlagState::Unreadable { why: why.to_owned() };
    let Ok(text) = std::str::from_utf8(data) else { return unreadable("not text") };
    let Some(mac_at) = text.rfind("mac=") else { return unreadable("no mac line") };
    let (body, mac_line) = text.split_at(mac_at);
    let mac = mac_line.trim_start_matches("mac=").trim_end_matches('\n');
    if !body.starts_with(&format!("{MAGIC}\n")) {
        return unreadable("not a GSE boot flag");
    }
    let mut fields = std::collections::BTreeMap::new();
    for line in body.lines().skip(1) {
        let Some((k, v)) = line.split_once('=') else { return unreadable("malformed line") };
        fields.insert(k, v);
    }
    let get = |k: &str| fields.get(k).copied();
    let (Some(s), Some(v), Some(c), Some(g)) =
        (get("slot"), get("image_version"), get("healthy_cycles"), get("last_good"))
    else {
        return unreadable("a field is missing");
    };
    let (Ok(c), Ok(g)) = (c.parse(), g.parse()) else { return unreadable("a number is malformed") };
    if mac.len() != 64 || !constant_time_eq(mac.as_bytes(), key.mac(body).as_bytes()) {
        return FlagState::Forged { why: "its MAC does not verify".into() };
    }
    if s != slot {
        return FlagState::Forged { why: format!("it belongs to slot {s}") };
    }
    FlagState::Valid { flag: BootFlag { slot: s.into(), image_version: v.into(), healthy_cycles: c, last_good: g } }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> FlagKey {
        FlagKey::from_bytes([b; KEY_LEN])
    }

    fn flag() -> BootFlag {
        BootFlag { slot: "a".into(), image_version: "2026.11.1".into(), healthy_cycles: 4, last_good: 1_795_651_200 }
    }

    #[test]
    fn valid_flag_round_trips() {
        let enc = flag().encode(&key(1));
        assert_eq!(verify(enc.as_bytes(), "a", &key(1)), FlagState::Valid { flag: flag() });
    }

    #[test]
    fn writing_the_flag_leaves_the_slot_root_times_as_they_were() {
        let d = tempfile::tempdir().unwrap();
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        fs::File::open(d.path()).unwrap().set_times(fs::FileTimes::new().set_modified(old)).unwrap();
        flag().write(d.path(), &key(1)).unwrap();
        assert_eq!(fs::metadata(d.path()).unwrap().modified().unwrap(), old);
        assert_eq!(read(d.path(), "a", &key(1)), FlagState::Valid { flag: flag() });
    }

    #[test]
    fn missing_unreadable_and_forged_are_told_apart() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path(), "a", &key(1)), FlagState::Missing);

        let enc = flag().encode(&key(1));
        // One flipped byte in the body: the MAC no longer verifies.
        let mut flipped = enc.clone().into_bytes();
        let at = enc.find("healthy_cycles=4").unwrap() + "healthy_cycles=".len();
        flipped[at] = b'9';
        assert!(matches!(verify(&flipped, "a", &key(1)), FlagState::Forged { .. }));
        // Another machine's key.
        assert!(matches!(verify(enc.as_bytes(), "a", &key(2)), FlagState::Forged { .. }));
        // The other slot's valid flag copied over.
        assert_eq!(verify(enc.as_bytes(), "b", &key(1)), FlagState::Forged { why: "it belongs to slot a".into() });
        // Garbage and truncation.
        assert!(matches!(verify(b"\x00\x01\x02", "a", &key(1)), FlagState::Unreadable { .. }));
        assert!(matches!(verify(&enc.as_bytes()[..20], "a", &key(1)), FlagState::Unreadable { .. }));
    }

    #[test]
    fn key_is_created_once_with_private_mode() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("boot/gse/flag.key");
        let k = FlagKey::create(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(FlagKey::create(&p).is_err());
        let again = FlagKey::load(&p).unwrap();
        assert_eq!(k.mac("x"), again.mac("x"));
        fs::write(&p, b"short").unwrap();
        assert!(FlagKey::load(&p).is_err());
    }
}
