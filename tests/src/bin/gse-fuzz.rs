//! A time-bounded mutational fuzzer for every parser that reads bytes from
//! outside (stable Rust: cargo-fuzz needs a nightly toolchain this project does
//! not have). Each target starts from its checked-in corpus in `tests/fuzz/`,
//! mutates (bit flips, interesting bytes, inserts, deletions, repeats, splices)
//! and checks that the parser never panics, never takes longer than a second, and
//! keeps its round-trip properties. A failing input is saved under
//! `target/fuzz-failures/` and the run exits 1.
//!
//!   gse-fuzz [--seconds N] [TARGET...]     default: every target, 15 s each
//!   gse-fuzz --write-seeds                 regenerate tests/fuzz/*/seed-*

use std::{
    fs,
    panic::{AssertUnwindSafe, catch_unwind},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use gsed::{
    boot::flag::{self, BootFlag, FlagKey, FlagState},
    image::{Chunk, Index},
    journal,
    logs::{archive, spool},
    network::dhcp,
    servers::{
        manifest::{self, Manifest},
        publish::Channel,
    },
};

type Check = fn(&Ctx, &[u8]) -> Result<(), String>;

/// What targets need besides the input.
struct Ctx {
    tmp: tempfile::TempDir,
    flag_key: FlagKey,
    public_key: String,
    seed_signature: String,
}

const TARGETS: &[(&str, Check)] = &[
    ("config", config),
    ("manifest", manifest),
    ("channel", channel),
    ("index", index),
    ("bootflag", bootflag),
    ("journal", journal_reader),
    ("dhcp", dhcp_reply),
    ("signature", signature),
    ("kmsg", kmsg),
    ("archive", archive_meta),
];

fn config(ctx: &Ctx, data: &[u8]) -> Result<(), String> {
    let tree = ctx.tmp.path().join("config.d");
    let files = ["system/boot.conf", "system/etc.conf", "system/network.conf", "controller/server/server.info.conf"];
    let rel = files[data.first().copied().unwrap_or(0) as usize % files.len()];
    let _ = fs::remove_dir_all(&tree);
    let p = tree.join(rel);
    fs::create_dir_all(p.parent().unwrap()).map_err(|e| e.to_string())?;
    fs::write(&p, data).map_err(|e| e.to_string())?;
    if let Err(errors) = gsed::config::load(std::slice::from_ref(&tree)) {
        for e in errors {
            if e.message.trim().is_empty() || !e.file.starts_with(&tree) {
                return Err(format!("an error that names no file or says nothing: {e:?}"));
            }
        }
    }
    Ok(())
}

fn manifest(_: &Ctx, data: &[u8]) -> Result<(), String> {
    let Ok(m) = Manifest::parse(&String::from_utf8_lossy(data)) else { return Ok(()) };
    if let Some(e) = m.entries.iter().find(|e| !manifest::safe_path(&e.path)) {
        return Err(format!("accepted an unsafe path {:?}", e.path));
    }
    let again = Manifest::parse(&m.encode()).map_err(|e| format!("its own encoding does not parse: {e}"))?;
    if again != m {
        return Err("encode/parse does not round-trip".into());
    }
    Ok(())
}

fn channel(_: &Ctx, data: &[u8]) -> Result<(), String> {
    let Ok(c) = serde_json::from_slice::<Channel>(data) else { return Ok(()) };
    let back: Channel = serde_json::from_slice(&serde_json::to_vec(&c).map_err(|e| e.to_string())?)
        .map_err(|e| format!("its own JSON does not parse: {e}"))?;
    if back != c {
        return Err("JSON does not round-trip".into());
    }
    Ok(())
}

/// An index from a server: parsing refuses what it must (names that are not
/// digests, sizes that do not add up), never panics, and what it accepts names
/// only files inside the chunk store.
fn index(_: &Ctx, data: &[u8]) -> Result<(), String> {
    let Ok(i) = Index::parse(data) else { return Ok(()) };
    for c in &i.chunks {
        let p = c.rel_path();
        if !manifest::safe_path(&p) || p.contains("..") {
            return Err(format!("accepted chunk path {p}"));
        }
    }
    if i.chunks.iter().map(|c| u64::from(c.size)).sum::<u64>() != i.size {
        return Err("accepted an index whose sizes do not add up".into());
    }
    Ok(())
}

fn bootflag(ctx: &Ctx, data: &[u8]) -> Result<(), String> {
    if let FlagState::Valid { flag } = flag::verify(data, "a", &ctx.flag_key) {
        let again = flag::verify(flag.encode(&ctx.flag_key).as_bytes(), "a", &ctx.flag_key);
        if !matches!(&again, FlagState::Valid { flag: f } if *f == flag) {
            return Err(format!("a valid flag does not survive encode/verify: {again:?}"));
        }
    }
    Ok(())
}

fn journal_reader(_: &Ctx, data: &[u8]) -> Result<(), String> {
    let (records, good, _) = journal::parse(data);
    if good > data.len() as u64 {
        return Err(format!("good prefix {good} is longer than the input"));
    }
    let (again, good2, _) = journal::parse(&data[..good as usize]);
    if again != records || good2 != good {
        return Err("the good prefix does not parse to the same records".into());
    }
    Ok(())
}

fn dhcp_reply(_: &Ctx, data: &[u8]) -> Result<(), String> {
    if let Some(l) = dhcp::lease_from_bytes(data) {
        let (r, b, x) = (l.renew_at(), l.rebind_at(), l.expires_at());
        let _ = l.expires_epoch();
        if !(r <= b && b <= x) {
            return Err(format!("renew {r:?} / rebind {b:?} / expiry {x:?} out of order"));
        }
    }
    Ok(())
}

fn signature(ctx: &Ctx, data: &[u8]) -> Result<(), String> {
    let sig = String::from_utf8_lossy(data);
    // minisign ignores bytes after the 74 of a signature and the padding bits of
    // base64 (malleable, not a forgery): what must never verify is a signature
    // whose own 74 bytes changed.
    if manifest::verify(&ctx.public_key, SIGNED, &sig).is_ok() {
        let bytes = |text: &str| base64_prefix(text.lines().nth(1).unwrap_or(""));
        let (got, own) = (bytes(&sig), bytes(&ctx.seed_signature));
        if got.get(..74) != own.get(..74) {
            return Err("a changed signature verifies".into());
        }
    }
    Ok(())
}

fn kmsg(_: &Ctx, data: &[u8]) -> Result<(), String> {
    for line in String::from_utf8_lossy(data).lines() {
        let _ = spool::kernel_line(line);
    }
    Ok(())
}

fn archive_meta(ctx: &Ctx, data: &[u8]) -> Result<(), String> {
    let p = ctx.tmp.path().join("boot.tar.zst");
    fs::write(&p, data).map_err(|e| e.to_string())?;
    let _ = archive::read_meta(&p);
    Ok(())
}

const SIGNED: &[u8] = b"# GSE config.d manifest 2\nserial 1\n";

/// The bytes of the leading base64 characters of `s` (up to `=` or anything else).
fn base64_prefix(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for v in s.trim().bytes().map_while(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn corpus_dir(target: &str) -> PathBuf {
    gse_tests::repo().join("tests/fuzz").join(target)
}

/// xorshift: fast, and seeded per run so a run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

const INTERESTING: &[u8] = b"\x00\xff\n\r=\"'[]{}.,/\\:;#-0123456789 \x7f";

fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| INTERESTING[rng.below(INTERESTING.len())]).collect();
                v.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                v.drain(i..i + n);
            }
            4 if len > 0 => {
                // Repeat a piece: long lines, many tables, deep nesting.
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let piece = v[i..i + n].to_vec();
                let times = 1 + rng.below(200);
                for _ in 0..times {
                    v.splice(i..i, piece.iter().copied());
                }
            }
            5 if len > 0 => v.truncate(rng.below(len)),
            6 => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = a + rng.below(other.len() - a) + 1;
                    let at = rng.below(len + 1);
                    v.splice(at..at, other[a..b].iter().copied());
                }
            }
            _ => {
                let i = rng.below(len + 1);
                v.insert(i, rng.next() as u8);
            }
        }
        if v.len() > 256 << 10 {
            v.truncate(256 << 10);
        }
    }
    v
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ctx = Ctx {
        tmp: tempfile::Builder::new().prefix("gse-fuzz-").tempdir().expect("tempdir"),
        flag_key: FlagKey::from_bytes([7; flag::KEY_LEN]),
        public_key: fs::read_to_string(corpus_dir("signature").join("public-key"))
            .unwrap_or_default()
            .trim()
            .to_owned(),
        seed_signature: fs::read_to_string(corpus_dir("signature").join("seed-1")).unwrap_or_default(),
    };
    if args.iter().any(|a| a == "--write-seeds") {
        write_seeds(&ctx);
        return;
    }
    let seconds: u64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let wanted: Vec<&String> = args.iter().filter(|a| !a.starts_with("--") && a.parse::<u64>().is_err()).collect();
    // Panics are the findings: keep them off the screen, keep their message.
    let last_panic = Arc::new(Mutex::new(String::new()));
    {
        let last = last_panic.clone();
        std::panic::set_hook(Box::new(move |info| {
            *last.lock().unwrap_or_else(|e| e.into_inner()) = info.to_string();
        }));
    }
    let mut failed = 0;
    let mut passed = 0;
    for (name, check) in TARGETS.iter().filter(|(n, _)| wanted.is_empty() || wanted.iter().any(|w| w == n)) {
        let corpus: Vec<Vec<u8>> = fs::read_dir(corpus_dir(name))
            .map(|rd| {
                rd.flatten().filter(|e| e.file_name() != "public-key").filter_map(|e| fs::read(e.path()).ok()).collect()
            })
            .unwrap_or_default();
        if corpus.is_empty() {
            // Not a panic: the hook above keeps panics off the screen.
            eprintln!("fuzz {name}: no corpus in {} (gse-fuzz --write-seeds writes one)", corpus_dir(name).display());
            std::process::exit(2);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (gsed::journal::now() << 1) ^ name.len() as u64);
        let (start, mut runs, mut slowest, mut finding) = (Instant::now(), 0u64, Duration::ZERO, None);
        while start.elapsed() < Duration::from_secs(seconds) && finding.is_none() {
            // Every corpus entry as it is first (found-* are past findings), then mutants.
            let input = match corpus.get(runs as usize) {
                Some(seed) => seed.clone(),
                None => {
                    let pick = rng.below(corpus.len());
                    mutate(&mut rng, &corpus[pick], &corpus)
                }
            };
            let t0 = Instant::now();
            let outcome = catch_unwind(AssertUnwindSafe(|| check(&ctx, &input)));
            let took = t0.elapsed();
            slowest = slowest.max(took);
            runs += 1;
            let why = match outcome {
                Err(_) => Some(format!("panic: {}", last_panic.lock().unwrap_or_else(|e| e.into_inner()))),
                Ok(Err(e)) => Some(e),
                Ok(Ok(())) if took > Duration::from_secs(1) => Some(format!("took {took:?}")),
                Ok(Ok(())) => None,
            };
            if let Some(why) = why {
                finding = Some((why, save(name, &input)));
            }
        }
        match finding {
            None => {
                passed += 1;
                println!(
                    "fuzz {name}: {runs} executions in {:.0} s ({} seeds), no finding, slowest {:.2} ms",
                    start.elapsed().as_secs_f64(),
                    corpus.len(),
                    slowest.as_secs_f64() * 1e3
                );
            }
            Some((why, at)) => {
                failed += 1;
                println!("fuzz {name}: FOUND after {runs} executions: {why}\n  input saved as {}", at.display());
            }
        }
    }
    println!("fuzz: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

fn save(target: &str, input: &[u8]) -> PathBuf {
    let dir = gse_tests::profile_dir().join("../fuzz-failures");
    let _ = fs::create_dir_all(&dir);
    let path = dir.join(format!(
        "{target}-{:016x}",
        input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
    ));
    let _ = fs::write(&path, input);
    path
}

/// The seeds: real inputs of each kind, made with GSE's own writers.
fn write_seeds(ctx: &Ctx) {
    let put = |target: &str, name: &str, data: &[u8]| {
        let d = corpus_dir(target);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(name), data).unwrap();
    };
    let conf = gse_tests::repo().join("config.d");
    for (i, rel) in [
        "system/boot.conf",
        "system/etc.conf",
        "system/network.conf",
        "controller/server/server.info.conf",
        "system/examples/network.static.conf",
    ]
    .iter()
    .enumerate()
    {
        put("config", &format!("seed-{i}"), &fs::read(conf.join(rel)).unwrap());
    }
    let mut m = Manifest::from_dir(&conf).unwrap();
    m.serial = 1_800_000_000;
    put("manifest", "seed-1", m.encode().as_bytes());
    let ch = Channel {
        channel: "stable".into(),
        version: "2026.12".into(),
        index: "images/2026.12/index.json".into(),
        sha256: "ab".repeat(32),
        size: 123_456_789,
        packed: 45_678_901,
        published: 1_800_000_000,
        rollout: 10,
    };
    put("channel", "seed-1", &serde_json::to_vec_pretty(&ch).unwrap());
    let data = b"a chunk of an image".repeat(100);
    let packed = zstd::bulk::compress(&data, 3).unwrap();
    let chunk = Chunk {
        id: manifest::sha256_hex(&data),
        size: data.len() as u32,
        packed: packed.len() as u32,
        packed_sha256: Some(manifest::sha256_hex(&packed)),
    };
    let index = Index {
        format: gsed::image::index::FORMAT,
        version: "2026.12".into(),
        size: data.len() as u64,
        chunks: vec![chunk],
    };
    put("index", "seed-1", &serde_json::to_vec(&index).unwrap());
    let f =
        BootFlag { slot: "a".into(), image_version: "2026.11".into(), healthy_cycles: 12, last_good: 1_800_000_000 };
    put("bootflag", "seed-1", f.encode(&ctx.flag_key).as_bytes());
    let dir = ctx.tmp.path().join("journal");
    let (mut j, _) = journal::Journal::open(&dir.join("j")).unwrap();
    j.append("boot-1", "a", journal::Event::BootStarted).unwrap();
    j.append("boot-1", "a", journal::Event::Red { reason: "checks".into(), failures: vec!["x failed".into()] })
        .unwrap();
    j.append("boot-1", "a", journal::Event::CleanShutdown).unwrap();
    put("journal", "seed-1", &fs::read(dir.join("j")).unwrap());
    put("dhcp", "seed-1", &dhcp_ack());
    let (public, secret, line) = manifest::keygen().unwrap();
    let _ = public;
    let key = ctx.tmp.path().join("k.sec");
    fs::write(&key, secret).unwrap();
    put("signature", "public-key", line.as_bytes());
    put("signature", "seed-1", manifest::sign(&key, SIGNED, "fuzz").unwrap().as_bytes());
    put("kmsg", "seed-1", b"6,1,1000,-;Linux version 6.1.0\n4,2,2000,-;virtio_blk virtio1: [vda] 3145728 512-byte logical blocks\n SUBSYSTEM=virtio\n");
    let spool = ctx.tmp.path().join("spool");
    fs::create_dir_all(&spool).unwrap();
    fs::write(spool.join("gsed.log"), "gsed ready\n").unwrap();
    let meta = archive::BootMeta {
        boot_id: "b1".into(),
        started: 1,
        verdict: Some(gse_dbus::boot::Verdict::Red),
        ..Default::default()
    };
    let a = archive::write(&ctx.tmp.path().join("logs"), &meta, &spool).unwrap();
    put("archive", "seed-1", &fs::read(a).unwrap());
    println!("seeds written under {}", gse_tests::repo().join("tests/fuzz").display());
}

/// A DHCPACK as dnsmasq sends it (built with the same library gsed decodes with).
fn dhcp_ack() -> Vec<u8> {
    use dhcproto::{Encodable, Encoder, v4};
    let mut m = v4::Message::default();
    m.set_opcode(v4::Opcode::BootReply)
        .set_xid(0x1234_5678)
        .set_yiaddr([192, 0, 2, 50])
        .set_chaddr(&[2, 0, 0, 0, 0, 1]);
    let o = m.opts_mut();
    o.insert(v4::DhcpOption::MessageType(v4::MessageType::Ack));
    o.insert(v4::DhcpOption::ServerIdentifier([192, 0, 2, 1].into()));
    o.insert(v4::DhcpOption::SubnetMask([255, 255, 255, 0].into()));
    o.insert(v4::DhcpOption::Router(vec![[192, 0, 2, 1].into()]));
    o.insert(v4::DhcpOption::DomainNameServer(vec![[192, 0, 2, 1].into()]));
    o.insert(v4::DhcpOption::AddressLeaseTime(3600));
    o.insert(v4::DhcpOption::Renewal(1800));
    o.insert(v4::DhcpOption::Rebinding(3150));
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}
