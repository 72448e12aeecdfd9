//! How an image travels (DESIGN §11). A published image is its uncompressed
//! stage4 tar stream cut into content-defined chunks (FastCDC), each stored once
//! under `gse1/chunks/` compressed with zstd and named by the sha256 of its
//! contents, plus a signed index listing the chunks in order. Everything is plain
//! static files, so nginx, a mirror or a CDN serves it.
//!
//! A client keeps the chunks of the images its slots hold in a cache on the
//! persistent area, so a new version costs only the chunks that changed; every
//! chunk is verified against the signed index before it is cached, and again
//! before it is written to a slot.

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
    #[error("no server could deliver chunk {id}: {why}")]
    Unreachable { id: String, why: String },
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("{0}")]
    Refused(String),
    #[error("stopped")]
    Stopped,
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let what = what.into();
    move |e| ImageError::Io(what, e)
}
