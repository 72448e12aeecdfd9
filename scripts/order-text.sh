#!/bin/bash
# Writes gsed/text-order.txt, the functions gsed runs while it starts, answers
# the calls of scripts/bench-health.sh, idles and stops, as counted by
# valgrind's callgrind. The release link puts them side by side (gsed/build.rs),
# so the code an idle gsed keeps resident is about what it ran, not every
# 64 KiB window that one of its functions sits in.
# Run it again after changes that move gsed's everyday paths; a stale list only
# costs memory. Run as root, as bench-health.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || apt-get install -y -q --no-install-recommends valgrind
# The release build, with its symbols: callgrind names functions by them.
# Through RUSTFLAGS, which cargo keeps out of the symbol names, and the same
# packages, whose features decide them: a profile with strip = false would be
# hashed into every name, which then would not be the release build's.
RUSTFLAGS="-C strip=none" cargo build --release -q --workspace --bins --target-dir target/symbols
out=$(mktemp /tmp/gse-callgrind.XXXXXX)
trap 'rm -f "$out"' EXIT
GSED=target/symbols/release/gsed RUNS=3 \
	GSED_WRAP="valgrind --tool=callgrind --callgrind-out-file=$out --dump-instr=no --compress-strings=no --demangle=no" \
	scripts/bench-health.sh >/dev/null
{
	echo "# Made by scripts/order-text.sh: functions gsed ran, linked first (gsed/build.rs)."
	# Callgrind marks recursion depth as NAME'2; raw addresses have no symbol.
	awk '/^ob=/ {ob = substr($0, 4)} /^fn=/ && ob ~ /\/gsed$/ {sub(/^fn=/, ""); sub(/'"'"'[0-9]+$/, ""); print}' "$out" |
		grep -v -e '^0x' -e '^(below main)$' | LC_ALL=C sort -u
} >gsed/text-order.txt
echo "gsed/text-order.txt: $(($(wc -l <gsed/text-order.txt) - 1)) functions"
