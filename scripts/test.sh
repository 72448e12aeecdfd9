#!/bin/sh
# Installs what the tests need, then runs every test: unit tests, the integration
# tests in tests/ (real dbus-daemons, gsed processes, namespaces, loop devices),
# and the whole-boot suite, which boots a Debian OpenRC client under qemu through
# GSE (tests/tests/vm.rs; it prints one line per boot).
# Run as root (the tests use setpriv, namespaces and loop devices). The first run
# downloads a Debian root and kernel into target/vm-cache (about a minute).
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh test
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings
cargo build --workspace --bins
# The VM suite boots what ships: the release binaries, in its image and initramfs.
cargo build --release --workspace --bins
cargo test --workspace -- --skip vm_
# Every parser of outside bytes, fuzzed for a bounded time each (tests/fuzz/).
target/release/gse-fuzz --seconds "${GSE_FUZZ_SECONDS:-15}"
cargo test -p gse-tests --test vm -- --show-output
