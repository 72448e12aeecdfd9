//! How an image travels (DESIGN §11). A published image is its uncompressed
//! stage4 tar stream cut into content-defined chunks (FastCDC), each stored once
//! under `gse1/chunks/` compressed with zstd and named by the sha256 of its
//! contents, plus a signed index listing the chunks in order. Everything is plain
//! static files, so nginx, a mirror or a CDN serves it.
//!
//! A client keeps the chunks of the images its slots hold in a cache on the
//! persistent area, so a new version costs only the chunks that changed; every
//! chunk is verified against the signed index before it is cached or written
//! to a slot, and a cached chunk is checked again (its zstd checksum) when read.

pub mod fetch;
pub mod index;
pub mod install;

pub use fetch::{Cache, Fetch, FetchStats};
pub use index::{Chunk, Index};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("index: {0}")]
    Index(String),
    #[error("chunk {id}: {why}")]
    Chunk { id: String, why: String },
    #[error("{} chunk(s) damaged in the cache (removed, to be fetched again), first {}", .0.len(), .0.first().map_or("", String::as_str))]
    Damaged(Vec<String>),
    #[error("no server could deliver chunk {id}: {why}")]
    Unreachable { id: String, why: String },
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("{0}")]
    Refused(String),
    #[error("stopped")]
    Stopped,
}

/// Records that `slot` now holds the image of `index` (what the cache keeps).
pub fn record_slot(paths: &crate::paths::Paths, slot: &str, index: &Index) -> Result<(), ImageError> {
    let json = serde_json::to_vec(index).expect("an index serialises");
    crate::fsutil::write_atomic(&paths.slot_index(slot), &json, 0o644)
        .map_err(io(format!("recording the image of slot {slot}")))
}

/// The indexes of the images `slots` hold, as far as GSE installed them.
pub fn slot_indexes<'a>(paths: &crate::paths::Paths, slots: impl IntoIterator<Item = &'a String>) -> Vec<Index> {
    slots
        .into_iter()
        .filter_map(|s| std::fs::read(paths.slot_index(s)).ok().and_then(|b| Index::parse(&b).ok()))
        .collect()
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let what = what.into();
    move |e| ImageError::Io(what, e)
}
