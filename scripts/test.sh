#!/bin/sh
# Installs what the tests need, then runs every test: unit tests and the
# integration tests in tests/, which start real dbus-daemons and gsed processes.
# Run as root (the tests use setpriv, namespaces and loop devices).
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --workspace --bins
cargo test --workspace
