//! Lays out gsed's code for a small resident set (see `text-order.txt`).
//!
//! The kernel maps a binary's code in 64 KiB windows around each page that
//! faults (fault-around), so an idle gsed that has run 1.6 MB of scattered
//! functions holds nearly all of its 4.8 MB of code. Linking the functions it
//! runs next to each other keeps the rest out of memory. Only the release
//! build of the binary, and only where rustc links with its own lld (the
//! default for x86_64 Linux since Rust 1.90), which reads the order file;
//! names missing from it (code changed since it was made) are simply not
//! placed, so a stale file costs memory, never a build.
use std::path::Path;

fn main() {
    let order = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("text-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    let release = std::env::var("PROFILE").as_deref() == Ok("release");
    let lld = std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu");
    if release && lld && order.exists() {
        println!("cargo:rustc-link-arg-bin=gsed=-Wl,--symbol-ordering-file={}", order.display());
        println!("cargo:rustc-link-arg-bin=gsed=-Wl,--no-warn-symbol-ordering");
    }
}
