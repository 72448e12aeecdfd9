//! Lays out gsed's code for a small resident set (see `text-order.txt`).
//!
//! The kernel maps a binary's code in 64 KiB windows around each page that
//! faults (fault-around), so an idle gsed that has run 1.6 MB of scattered
//! functions holds nearly all of its 4.8 MB of code. Linking the functions it
//! runs next to each other keeps the rest out of memory. Only the release
//! build of the binary, and only with a linker that reads the order file
//! (lld: rustc's own on x86_64 Linux since Rust 1.90; a distribution's rustc
//! may link with GNU ld, which does not): names missing from it (code changed
//! since it was made) are simply not placed, so a stale file costs memory,
//! never a build. The names carry hashes of the dependencies' features, as
//! `cargo build --release --workspace` resolves them (the list is made so);
//! `-p gsed` alone resolves rustix without its default feature (tempfile, in
//! the tests crate, asks for it), and over half of the names differ.
use std::{env, path::Path, process::Command};

const FLAGS: [&str; 2] = ["--symbol-ordering-file", "--no-warn-symbol-ordering"];

fn main() {
    let order = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("text-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    if env::var("PROFILE").as_deref() != Ok("release") || !order.exists() {
        return;
    }
    if linker_orders(&order) {
        println!("cargo:rustc-link-arg-bin=gsed=-Wl,{}={}", FLAGS[0], order.display());
        println!("cargo:rustc-link-arg-bin=gsed=-Wl,{}", FLAGS[1]);
    } else {
        println!("cargo:warning=the linker does not take {}: gsed's code is not laid out by use", FLAGS[0]);
    }
}

/// Whether the linker this build uses takes the order flags: a one-line
/// program linked with them, by the same rustc, target, linker and flags.
fn linker_orders(order: &Path) -> bool {
    let Some(out) = env::var_os("OUT_DIR").map(|d| Path::new(&d).join("order-probe")) else { return false };
    let mut rustc = Command::new(env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()));
    rustc.args(["-", "--crate-name", "order_probe", "-o"]).arg(&out);
    if let Ok(target) = env::var("TARGET") {
        rustc.args(["--target", &target]);
    }
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        rustc.arg("-C").arg(format!("linker={}", linker.to_string_lossy()));
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    rustc.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    rustc.arg(format!("-Clink-arg=-Wl,{}={}", FLAGS[0], order.display()));
    rustc.arg(format!("-Clink-arg=-Wl,{}", FLAGS[1]));
    rustc.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let Ok(mut child) = rustc.spawn() else { return false };
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        let _ = stdin.write_all(b"fn main() {}\n");
    }
    child.wait().is_ok_and(|s| s.success())
}
