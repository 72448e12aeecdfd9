//! The signed MANIFEST of a published config.d (DESIGN §8): one line per file,
//! `sha256 size mode path`, sorted by path, signed with minisign (ed25519).
//! Both sides live here: building and signing for `gsectl publish`, parsing and
//! verifying for the client's sync.

use std::{
    fmt::Write as _,
    fs,
    io::Cursor,
    os::unix::fs::PermissionsExt,
    path::{Component, Path},
};

use sha2::{Digest, Sha256};

const HEADER: &str = "# GSE config.d manifest 2";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sha256: String,
    pub size: u64,
    pub mode: u32,
    /// Relative path inside config.d, `/`-separated.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    /// Grows with every publish of the tree (signed with it): a client refuses a
    /// manifest older than one it has accepted, so a replayed one cannot roll
    /// config.d back.
    pub serial: u64,
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("MANIFEST line {line}: {why}")]
    Malformed { line: usize, why: String },
    #[error("MANIFEST names '{0}', which escapes the config.d tree")]
    Escapes(String),
    #[error("MANIFEST names '{0}' twice, or as both a file and a directory")]
    Conflict(String),
    #[error("signature: {0}")]
    Signature(String),
    #[error("{path}: {why}")]
    Source { path: String, why: String },
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The sha256 (hex) and size of a file, read in pieces (images are large).
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    use std::io::Read;
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((hex(&h.finalize()), size));
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
}

/// A path is safe when it is relative, made only of normal components, and has no
/// characters that would confuse a URL or a shell.
pub fn safe_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && Path::new(p).components().all(|c| matches!(c, Component::Normal(_)))
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.+@/".contains(c))
}

impl Manifest {
    /// Describes every regular file under `dir`. Symlinks and other special files
    /// are refused: a client only ever receives plain files.
    pub fn from_dir(dir: &Path) -> Result<Manifest, ManifestError> {
        let mut entries = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            let rd = fs::read_dir(&d)
                .map_err(|e| ManifestError::Source { path: d.display().to_string(), why: e.to_string() })?;
            for e in rd.flatten() {
                let p = e.path();
                let rel = p.strip_prefix(dir).unwrap_or(&p).to_string_lossy().into_owned();
                let meta = fs::symlink_metadata(&p)
                    .map_err(|e| ManifestError::Source { path: rel.clone(), why: e.to_string() })?;
                if meta.is_dir() {
                    stack.push(p);
                } else if meta.is_file() {
                    if !safe_path(&rel) {
                        return Err(ManifestError::Source { path: rel, why: "unusual characters in the name".into() });
                    }
                    let data =
                        fs::read(&p).map_err(|e| ManifestError::Source { path: rel.clone(), why: e.to_string() })?;
                    let mode = if meta.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 };
                    entries.push(Entry { sha256: sha256_hex(&data), size: data.len() as u64, mode, path: rel });
                } else {
                    return Err(ManifestError::Source {
                        path: rel,
                        why: "is not a regular file (symlinks are not published)".into(),
                    });
                }
            }
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Manifest { serial: 0, entries })
    }

    pub fn encode(&self) -> String {
        let mut out = format!("{HEADER}\nserial {}\n", self.serial);
        for e in &self.entries {
            let _ = writeln!(out, "{} {} {:o} {}", e.sha256, e.size, e.mode, e.path);
        }
        out
    }

    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, HEADER)) => {}
            _ => return Err(ManifestError::Malformed { line: 1, why: "not a GSE config.d manifest".into() }),
        }
        let serial = match lines.next() {
            Some((_, l)) => l.strip_prefix("serial ").and_then(|n| n.parse().ok()),
            None => None,
        }
        .ok_or_else(|| ManifestError::Malformed { line: 2, why: "expected 'serial N'".into() })?;
        let mut entries: Vec<Entry> = Vec::new();
        for (i, line) in lines {
            let bad = |why: &str| ManifestError::Malformed { line: i + 1, why: why.into() };
            let mut f = line.splitn(4, ' ');
            let (Some(sha), Some(size), Some(mode), Some(path)) = (f.next(), f.next(), f.next(), f.next()) else {
                return Err(bad("expected 'sha256 size mode path'"));
            };
            if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad("the digest is not a sha256 in hex"));
            }
            let size = size.parse().map_err(|_| bad("the size is not a number"))?;
            let mode = u32::from_str_radix(mode, 8)
                .ok()
                .filter(|m| *m == 0o644 || *m == 0o755)
                .ok_or_else(|| bad("mode must be 644 or 755"))?;
            if !safe_path(path) {
                return Err(ManifestError::Escapes(path.to_owned()));
            }
            entries.push(Entry { sha256: sha.to_ascii_lowercase(), size, mode, path: path.to_owned() });
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        // A path listed twice, or a file that another entry needs as a directory
        // (`a` and `a/b`, whatever sorts between them, such as `a-b`).
        let files: std::collections::BTreeSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        if files.len() != entries.len() {
            let dup = entries.windows(2).find(|w| w[0].path == w[1].path).map(|w| w[1].path.clone());
            return Err(ManifestError::Conflict(dup.unwrap_or_default()));
        }
        for e in &entries {
            let mut parent = e.path.as_str();
            while let Some((up, _)) = parent.rsplit_once('/') {
                if files.contains(up) {
                    return Err(ManifestError::Conflict(e.path.clone()));
                }
                parent = up;
            }
        }
        Ok(Manifest { serial, entries })
    }
}

/// Signs `data` with a minisign secret key file (unencrypted, as `gsectl keygen`
/// writes it) and returns the `.minisig` text.
pub fn sign(secret_key_file: &Path, data: &[u8], trusted_comment: &str) -> Result<String, ManifestError> {
    let sk = minisign::SecretKey::from_file(secret_key_file, Some(String::new())).map_err(|e| {
        ManifestError::Signature(format!("cannot read the secret key {}: {e}", secret_key_file.display()))
    })?;
    let sig = minisign::sign(None, &sk, Cursor::new(data), Some(trusted_comment), Some("signed by gsectl publish"))
        .map_err(|e| ManifestError::Signature(e.to_string()))?;
    Ok(sig.into_string())
}

/// Verifies `signature` (`.minisig` text) over `data` with a public key given as
/// the base64 line of a minisign `.pub` file.
pub fn verify(public_key: &str, data: &[u8], signature: &str) -> Result<(), ManifestError> {
    let pk = minisign::PublicKey::from_base64(public_key.trim())
        .map_err(|e| ManifestError::Signature(format!("public_key in server.info.conf is unusable: {e}")))?;
    let sigbox = minisign::SignatureBox::from_string(signature)
        .map_err(|e| ManifestError::Signature(format!("malformed signature: {e}")))?;
    // minisign 0.7 panics on some malformed signatures (found by tests/fuzz): the
    // text comes from a server, so a panic is a refusal, never a crash.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        minisign::verify(&pk, &sigbox, Cursor::new(data), true, false, false)
    }))
    .map_err(|_| ManifestError::Signature("malformed signature".into()))?
    .map_err(|e| ManifestError::Signature(format!("does not verify with the configured public key: {e}")))
}

/// A new minisign key pair: (public key file text, secret key file text, public
/// key base64 line). The secret key is unencrypted (minisign's `-W`), for
/// unattended publishing, and readable by the minisign tool itself.
pub fn keygen() -> Result<(String, String, String), ManifestError> {
    use blake2::{Blake2b, Digest as _, digest::consts::U32};
    let err = |e: minisign::PError| ManifestError::Signature(e.to_string());
    let kp = minisign::KeyPair::generate_unencrypted_keypair().map_err(err)?;
    // Layout: sig_alg 2, kdf_alg 2, chk_alg 2, salt 32, opslimit 8, memlimit 8,
    // keynum 8, secret key 64, checksum 32. The crate leaves kdf_alg at scrypt and
    // the checksum empty; minisign expects "\0\0" and BLAKE2b-256(sig_alg, keynum, sk).
    let mut bytes = kp.sk.to_bytes();
    if bytes.len() != 158 {
        return Err(ManifestError::Signature(format!("unexpected secret key layout ({} bytes)", bytes.len())));
    }
    bytes[2..4].copy_from_slice(&[0, 0]);
    bytes[6..54].fill(0);
    let mut h = Blake2b::<U32>::new();
    h.update(&bytes[0..2]);
    h.update(&bytes[54..62]);
    h.update(&bytes[62..126]);
    let chk = h.finalize();
    bytes[126..158].copy_from_slice(&chk);
    let sk = minisign::SecretKey::from_bytes(&bytes).map_err(err)?;
    let sk_box = sk.to_box(Some("minisign secret key (unencrypted), made by gsectl keygen")).map_err(err)?;
    let pk_box = kp.pk.to_box().map_err(err)?;
    Ok((pk_box.into_string(), sk_box.into_string(), kp.pk.to_base64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_escape_are_rejected() {
        for bad in ["../../etc/shadow", "/etc/shadow", "a/../b", "a//b", "./a", "a b", "", "a/.."] {
            assert!(!safe_path(bad), "{bad}");
        }
        assert!(safe_path("controller/server/server.info.conf"));
        let m = format!("{HEADER}\nserial 1\n{} 4 644 ../../etc/shadow\n", "0".repeat(64));
        assert_eq!(Manifest::parse(&m), Err(ManifestError::Escapes("../../etc/shadow".into())));
        let m = format!("{HEADER}\nserial 1\n{z} 4 644 a\n{z} 4 644 a/b\n", z = "0".repeat(64));
        assert!(matches!(Manifest::parse(&m), Err(ManifestError::Conflict(_))));
        // Whatever sorts between a file and what it would need to be a directory of.
        let m = format!("{HEADER}\nserial 1\n{z} 4 644 a\n{z} 4 644 a-b\n{z} 4 644 a/b/c\n", z = "0".repeat(64));
        assert_eq!(Manifest::parse(&m), Err(ManifestError::Conflict("a/b/c".into())));
        let m = format!("{HEADER}\nserial 1\n{z} 4 644 x\n{z} 4 644 x\n", z = "0".repeat(64));
        assert_eq!(Manifest::parse(&m), Err(ManifestError::Conflict("x".into())));
    }

    #[test]
    fn build_encode_parse_sign_verify() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("tree/system")).unwrap();
        fs::write(d.path().join("tree/system/boot.conf"), "primary = \"a\"\n").unwrap();
        fs::write(d.path().join("tree/README"), "hi").unwrap();
        let m = Manifest::from_dir(&d.path().join("tree")).unwrap();
        assert_eq!(m.entries.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["README", "system/boot.conf"]);
        let text = m.encode();
        assert_eq!(Manifest::parse(&text).unwrap(), m);

        let (pk_file, sk_file, pk) = keygen().unwrap();
        assert!(pk_file.starts_with("untrusted comment:"));
        fs::write(d.path().join("k.sec"), sk_file).unwrap();
        let sig = sign(&d.path().join("k.sec"), text.as_bytes(), "gse config.d").unwrap();
        verify(&pk, text.as_bytes(), &sig).unwrap();
        let mut tampered = text.clone();
        tampered.push('x');
        assert!(matches!(verify(&pk, tampered.as_bytes(), &sig), Err(ManifestError::Signature(_))));
        let (_, _, other) = keygen().unwrap();
        assert!(verify(&other, text.as_bytes(), &sig).is_err());
        std::os::unix::fs::symlink("README", d.path().join("tree/link")).unwrap();
        assert!(matches!(Manifest::from_dir(&d.path().join("tree")), Err(ManifestError::Source { .. })));
    }
}
