//! The chunk index of one image version, how a publisher makes it, and how a
//! client checks a chunk against it.

use std::{
    collections::HashSet,
    fs,
    io::{self, Read},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::ImageError;
use crate::servers::manifest::sha256_hex;

/// Chunk sizes: small enough that a changed file costs little (a 1 GB image
/// with 1% of its files changed: 1.4% of it travels), large enough that each
/// chunk's request, cache file and zstd frame stay small beside its contents
/// (~4 000 a GB; at 64 KiB on average gsed took a third more CPU for a full
/// install).
pub const MIN_CHUNK: u32 = 64 << 10;
pub const AVG_CHUNK: u32 = 256 << 10;
pub const MAX_CHUNK: u32 = 1 << 20;
/// zstd level for published chunks: publishing is done once, fetching by every client.
pub const PUBLISH_LEVEL: i32 = 12;
/// zstd level for chunks a client stores itself (an image installed from a file).
pub const LOCAL_LEVEL: i32 = 3;

/// The newest index format this gsed reads. An index says its format only
/// from format 2 on: every index published so far has no `format` field, and
/// older clients refuse fields they do not know.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// 1 when absent (see [`FORMAT`]).
    #[serde(default = "format_1", skip_serializing_if = "is_format_1")]
    pub format: u32,
    pub version: String,
    /// Bytes of the uncompressed image (a tar stream).
    pub size: u64,
    pub chunks: Vec<Chunk>,
}

fn format_1() -> u32 {
    1
}

fn is_format_1(f: &u32) -> bool {
    *f == 1
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    /// sha256 (lowercase hex) of the uncompressed contents.
    pub id: String,
    /// Uncompressed bytes.
    pub size: u32,
    /// Bytes as stored and fetched (zstd).
    pub packed: u32,
    /// sha256 of those stored bytes. A fetched chunk is checked by it, before
    /// it is decompressed: the same proof as hashing the contents (they are
    /// what these bytes decompress to), for a fifth of the bytes hashed.
    /// Indexes published before it existed are checked by `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed_sha256: Option<String>,
}

impl Chunk {
    /// Where the chunk lives under a `chunks/` directory (server or cache).
    pub fn rel_path(&self) -> String {
        format!("{}/{}.zst", &self.id[..2], self.id)
    }

    /// Checks `packed` is exactly this chunk and decompresses it: the digest
    /// of the packed bytes (or, for an older index, of the contents) and the
    /// declared size (a chunk that would grow past it is cut off, never held whole).
    pub fn unpack(&self, packed: &[u8]) -> Result<Vec<u8>, ImageError> {
        if packed.len() != self.packed as usize {
            let why = format!("{} bytes where the index says {}", packed.len(), self.packed);
            return Err(ImageError::Chunk { id: self.id.clone(), why });
        }
        let bad = |why: String| ImageError::Chunk { id: self.id.clone(), why };
        if self.packed_sha256.as_ref().is_some_and(|d| *d != sha256_hex(packed)) {
            return Err(bad("packed bytes do not match their digest".into()));
        }
        let data = decompress(packed, self.size as usize)
            .map_err(|e| bad(format!("does not decompress to its declared {} bytes: {e}", self.size)))?;
        if data.len() != self.size as usize {
            return Err(bad(format!("decompresses to {} bytes, the index says {}", data.len(), self.size)));
        }
        if self.packed_sha256.is_none() && sha256_hex(&data) != self.id {
            return Err(bad("contents do not match the digest".into()));
        }
        Ok(data)
    }
}

/// Decompresses one zstd frame of at most `size` bytes, with this thread's
/// decompression context (set up once, not once per chunk).
pub(crate) fn decompress(packed: &[u8], size: usize) -> io::Result<Vec<u8>> {
    thread_local! {
        static CONTEXT: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CONTEXT.with_borrow_mut(|context| {
        let d = match context {
            Some(d) => d,
            None => context.insert(zstd::bulk::Decompressor::new()?),
        };
        d.decompress(packed, size)
    })
}

fn valid_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Index {
    /// Parses and checks an index (after its signature or digest was verified):
    /// chunk names are digests and nothing else, sizes add up.
    pub fn parse(data: &[u8]) -> Result<Index, ImageError> {
        // The format first, read leniently: a newer index is refused for what
        // it is, not for the first field this gsed does not know.
        #[derive(Deserialize)]
        struct Format {
            #[serde(default = "format_1")]
            format: u32,
        }
        let bad = |why: String| Err(ImageError::Index(why));
        match serde_json::from_slice::<Format>(data) {
            Ok(Format { format }) if format > FORMAT => {
                return bad(format!(
                    "index format {format} is newer than this gsed reads ({FORMAT}): update GSE on this machine to take it"
                ));
            }
            Ok(Format { format: 0 }) => return bad("index format 0 does not exist: refused".into()),
            _ => {}
        }
        let index: Index = serde_json::from_slice(data).map_err(|e| ImageError::Index(e.to_string()))?;
        let mut total = 0u64;
        for (i, c) in index.chunks.iter().enumerate() {
            if !valid_id(&c.id) {
                return bad(format!("chunk {i} is named '{}', not a sha256 digest: refused", c.id));
            }
            if c.packed_sha256.as_deref().is_some_and(|d| !valid_id(d)) {
                return bad(format!("chunk {i} ({}) has a packed_sha256 that is not a sha256 digest: refused", c.id));
            }
            if c.size == 0 || c.size > MAX_CHUNK || c.packed == 0 || c.packed > MAX_CHUNK + (MAX_CHUNK >> 7) + 1024 {
                return bad(format!("chunk {i} ({}) has impossible sizes {} / {}", c.id, c.size, c.packed));
            }
            total += u64::from(c.size);
        }
        if total != index.size {
            return bad(format!("the chunks add up to {total} bytes, the index says {}", index.size));
        }
        Ok(index)
    }

    /// Each chunk once, in first-use order.
    pub fn unique(&self) -> Vec<&Chunk> {
        self.unique_at().into_iter().map(|(c, _)| c).collect()
    }

    /// Each chunk once, in first-use order, with the offset in the image
    /// where it is first used.
    pub fn unique_at(&self) -> Vec<(&Chunk, u64)> {
        let mut seen = HashSet::new();
        let mut at = 0u64;
        let mut out = Vec::new();
        for c in &self.chunks {
            if seen.insert(c.id.as_str()) {
                out.push((c, at));
            }
            at += u64::from(c.size);
        }
        out
    }

    /// Bytes a client without any of the chunks would fetch.
    pub fn packed_total(&self) -> u64 {
        self.unique().iter().map(|c| u64::from(c.packed)).sum()
    }
}

/// Reads a stage4 image (`.tar.zst` or plain `.tar`) as its uncompressed stream.
pub fn open_image(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut f = fs::File::open(path)?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic)?;
    let head = io::Cursor::new(magic[..n].to_vec());
    let whole = head.chain(f);
    if magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Ok(Box::new(zstd::stream::read::Decoder::new(whole)?))
    } else {
        Ok(Box::new(whole))
    }
}

/// Cuts `stream` into chunks, stores each new one under `store` (compressed
/// at `level`, named by digest) and returns the index. A chunk already in the
/// store is kept when it unpacks to exactly its contents, so a second version
/// costs only its new chunks. Chunks are compressed on every core.
pub fn write_chunks(stream: impl Read, store: &Path, version: &str, level: i32) -> Result<Index, ImageError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let mut cut = fastcdc::v2020::StreamCDC::new(stream, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK);
    let mut chunks = Vec::new();
    loop {
        // One batch in memory at a time: 8 chunks a core, each at most MAX_CHUNK.
        let batch = cut
            .by_ref()
            .take(8 * cores)
            .map(|c| c.map(|c| c.data))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ImageError::Io("reading the image".into(), io::Error::other(e.to_string())))?;
        if batch.is_empty() {
            break;
        }
        // Each core takes a contiguous part, so the results come back in order.
        let parts = std::thread::scope(|s| {
            let workers: Vec<_> = batch
                .chunks(batch.len().div_ceil(cores))
                .map(|part| {
                    s.spawn(move || -> Result<Vec<Chunk>, ImageError> {
                        let mut zc = zstd::bulk::Compressor::new(level).map_err(super::io("starting zstd"))?;
                        // A content checksum in every frame: a chunk that rotted in a cache
                        // fails to decompress, without hashing it with sha256 again.
                        zc.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
                            .map_err(super::io("setting up zstd"))?;
                        part.iter().map(|data| store_chunk(&mut zc, data, store)).collect()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|_| Err(ImageError::Refused("a chunk compressor panicked".into()))))
                .collect::<Result<Vec<_>, _>>()
        })?;
        chunks.extend(parts.into_iter().flatten());
    }
    let size = chunks.iter().map(|c| u64::from(c.size)).sum();
    Ok(Index { format: FORMAT, version: version.to_owned(), size, chunks })
}

/// Names one chunk and makes sure the store has it.
fn store_chunk(zc: &mut zstd::bulk::Compressor, data: &[u8], store: &Path) -> Result<Chunk, ImageError> {
    let mut chunk = Chunk { id: sha256_hex(data), size: data.len() as u32, packed: 0, packed_sha256: None };
    let path = store.join(chunk.rel_path());
    if let Ok(held) = fs::read(&path) {
        chunk.packed = held.len() as u32;
        if chunk.unpack(&held).is_ok() {
            chunk.packed_sha256 = Some(sha256_hex(&held));
            return Ok(chunk);
        }
    }
    let packed = zc.compress(data).map_err(super::io("compressing a chunk"))?;
    place(&path, &packed).map_err(super::io(format!("writing {}", path.display())))?;
    chunk.packed = packed.len() as u32;
    chunk.packed_sha256 = Some(sha256_hex(&packed));
    Ok(chunk)
}

/// Writes a file whole or not at all (temporary name, then rename).
pub(crate) fn place(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp: PathBuf = dir.join(format!(
        ".{}.{}-{}",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        std::process::id(),
        fastrand::u32(..)
    ));
    // The directory is made only when missing: a mkdir per chunk that finds
    // it there costs more than the write.
    match fs::write(&tmp, data) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir)?;
            fs::write(&tmp, data)?;
        }
        other => other?,
    }
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| rng.u8(..)).collect()
    }

    #[test]
    fn a_small_change_costs_few_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = sample(4 << 20, 1);
        let mut v2 = v1.clone();
        v2.splice(2 << 20..2 << 20, b"a new file in the middle".iter().copied());
        let a = write_chunks(&v1[..], dir.path(), "1", LOCAL_LEVEL).unwrap();
        let b = write_chunks(&v2[..], dir.path(), "2", LOCAL_LEVEL).unwrap();
        let old: HashSet<_> = a.chunks.iter().map(|c| &c.id).collect();
        let new = b.chunks.iter().filter(|c| !old.contains(&c.id)).count();
        assert!(new <= 2, "{new} new chunks of {}", b.chunks.len());
        assert_eq!(b.size, v2.len() as u64);
        let back: Vec<u8> = b
            .chunks
            .iter()
            .flat_map(|c| c.unpack(&fs::read(dir.path().join(c.rel_path())).unwrap()).unwrap())
            .collect();
        assert_eq!(back, v2);
    }

    #[test]
    fn publishing_again_keeps_good_chunks_and_replaces_damaged_ones() {
        let dir = tempfile::tempdir().unwrap();
        let data = sample(1 << 20, 3);
        let first = write_chunks(&data[..], dir.path(), "1", PUBLISH_LEVEL).unwrap();
        let (good, bad) = (dir.path().join(first.chunks[0].rel_path()), dir.path().join(first.chunks[1].rel_path()));
        let good_inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&good).unwrap());
        fs::write(&bad, b"rotten").unwrap();
        let again = write_chunks(&data[..], dir.path(), "1", PUBLISH_LEVEL).unwrap();
        assert_eq!(again, first);
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&fs::metadata(&good).unwrap()), good_inode, "rewritten");
        assert_eq!(again.chunks[1].unpack(&fs::read(&bad).unwrap()).unwrap().len(), again.chunks[1].size as usize);
    }

    #[test]
    fn a_chunk_is_refused_unless_it_is_exactly_what_the_index_says() {
        let data = sample(100_000, 2);
        let packed = zstd::bulk::compress(&data, 3).unwrap();
        // An index from before packed digests: the contents are hashed.
        let good =
            Chunk { id: sha256_hex(&data), size: data.len() as u32, packed: packed.len() as u32, packed_sha256: None };
        assert_eq!(good.unpack(&packed).unwrap(), data);
        let err = |c: &Chunk, p: &[u8]| c.unpack(p).unwrap_err().to_string();
        assert!(err(&good, &packed[..packed.len() - 1]).contains("bytes where the index says"));
        let small = Chunk { size: 1000, ..good.clone() };
        assert!(err(&small, &packed).contains("does not decompress to its declared 1000 bytes"));
        let other = Chunk { id: sha256_hex(b"other"), ..good.clone() };
        assert!(err(&other, &packed).contains("do not match the digest"));
        let mut flipped = packed.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        assert!(good.unpack(&flipped).is_err());

        // A published chunk: the packed bytes are hashed, the sizes still hold.
        let published = Chunk { packed_sha256: Some(sha256_hex(&packed)), ..good.clone() };
        assert_eq!(published.unpack(&packed).unwrap(), data);
        assert!(err(&published, &flipped).contains("packed bytes do not match their digest"));
        let small = Chunk { size: 1000, ..published.clone() };
        assert!(err(&small, &packed).contains("does not decompress to its declared 1000 bytes"));
        let mut other = zstd::bulk::compress(&sample(100_000, 9), 3).unwrap();
        other.resize(packed.len(), 0);
        assert!(err(&published, &other).contains("packed bytes do not match their digest"));
    }

    #[test]
    fn a_published_index_carries_the_digest_of_every_packed_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let index = write_chunks(&sample(1 << 20, 4)[..], dir.path(), "1", PUBLISH_LEVEL).unwrap();
        for c in &index.chunks {
            let held = fs::read(dir.path().join(c.rel_path())).unwrap();
            assert_eq!(c.packed_sha256.as_deref(), Some(sha256_hex(&held).as_str()));
        }
        let json = serde_json::to_vec(&index).unwrap();
        assert_eq!(Index::parse(&json).unwrap(), index);
        let bad = String::from_utf8(json).unwrap().replacen(index.chunks[0].packed_sha256.as_deref().unwrap(), "ab", 1);
        let e = Index::parse(bad.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("packed_sha256 that is not a sha256 digest"), "{e}");
    }

    #[test]
    fn a_repeated_chunk_is_fetched_once_for_where_the_image_first_needs_it() {
        let c = |id: char, size: u32| Chunk { id: id.to_string().repeat(64), size, packed: 10, packed_sha256: None };
        let index = Index {
            format: FORMAT,
            version: "1".into(),
            size: 60,
            chunks: vec![c('a', 10), c('b', 20), c('a', 10), c('c', 20)],
        };
        let at: Vec<(char, u64)> =
            index.unique_at().iter().map(|(c, at)| (c.id.chars().next().unwrap(), *at)).collect();
        assert_eq!(at, [('a', 0), ('b', 10), ('c', 40)]);
        assert_eq!(index.packed_total(), 30);
    }

    #[test]
    fn an_index_of_a_newer_format_is_refused_for_its_format_and_today_s_index_has_none() {
        let one = r#"{"version":"1","size":0,"chunks":[]}"#;
        let index = Index::parse(one.as_bytes()).unwrap();
        assert_eq!(index.format, 1);
        let again = serde_json::to_string(&index).unwrap();
        assert!(!again.contains("format"), "an index of format 1 is written as before: {again}");
        let newer = r#"{"format":2,"packs":[],"version":"1","size":0,"chunks":[]}"#;
        let err = Index::parse(newer.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("index format 2 is newer than this gsed reads (1)"), "{err}");
        let zero = r#"{"format":0,"version":"1","size":0,"chunks":[]}"#;
        assert!(Index::parse(zero.as_bytes()).unwrap_err().to_string().contains("format 0"));
    }

    #[test]
    fn an_index_names_chunks_by_digest_only() {
        let c = |id: &str| format!(r#"{{"version":"1","size":10,"chunks":[{{"id":"{id}","size":10,"packed":9}}]}}"#);
        assert!(Index::parse(c(&"a".repeat(64)).as_bytes()).is_ok());
        let e = Index::parse(c("../../../etc/passwd").as_bytes()).unwrap_err().to_string();
        assert!(e.contains("not a sha256 digest"), "{e}");
        let e = Index::parse(c(&"A".repeat(64)).as_bytes()).unwrap_err().to_string();
        assert!(e.contains("not a sha256 digest"), "{e}");
        let e = Index::parse(br#"{"version":"1","size":11,"chunks":[]}"#).unwrap_err().to_string();
        assert!(e.contains("add up to 0 bytes"), "{e}");
    }
}
