#!/bin/bash
# Writes gsed/text-order.txt, the functions gsed runs day to day, as counted by
# valgrind's callgrind in two runs: scripts/bench-health.sh (start, health,
# servers, update and network calls, idle, stop) and `gse-bench servers` (a
# client of two nginx servers that syncs config.d, probes them every second
# and fails over ten times). The release link puts these functions side by
# side (gsed/build.rs), so the code an idle gsed keeps resident is about what
# it ran, not every 64 KiB window that one of its functions sits in.
# Run it again after changes that move gsed's everyday paths; a stale list only
# costs memory. Run as root, as the benches.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || apt-get install -y -q --no-install-recommends valgrind
# The release build, with its symbols: callgrind names functions by them.
# Through RUSTFLAGS, which cargo keeps out of the symbol names, and the same
# packages, whose features decide them: a profile with strip = false would be
# hashed into every name, which then would not be the release build's.
RUSTFLAGS="-C strip=none" cargo build --release -q --workspace --bins --target-dir target/symbols
built=$PWD/target/symbols/release
out=$(mktemp -d /tmp/gse-order.XXXXXX)
trap 'rm -rf "$out"' EXIT
callgrind="valgrind --tool=callgrind --dump-instr=no --compress-strings=no --demangle=no"

GSED=$built/gsed RUNS=3 GSED_WRAP="$callgrind --callgrind-out-file=$out/cg.health" \
	scripts/bench-health.sh >/dev/null
# gse-bench runs the gsed beside it: here, callgrind's.
cp "$built/gse-bench" "$built/gsectl" "$out/"
printf '#!/bin/sh\nexec %s --callgrind-out-file=%s/cg.servers.%%p %s "$@"\n' "$callgrind" "$out" "$built/gsed" >"$out/gsed"
chmod 755 "$out/gsed"
"$out/gse-bench" servers >/dev/null

{
	echo "# Made by scripts/order-text.sh: functions gsed ran, linked first (gsed/build.rs)."
	# Callgrind marks recursion depth as NAME'2; raw addresses have no symbol.
	awk '/^ob=/ {ob = substr($0, 4)} /^fn=/ && ob ~ /\/gsed$/ {sub(/^fn=/, ""); sub(/'"'"'[0-9]+$/, ""); print}' "$out"/cg.* |
		grep -v -e '^0x' -e '^(below main)$' | LC_ALL=C sort -u
} >gsed/text-order.txt
echo "gsed/text-order.txt: $(($(wc -l <gsed/text-order.txt) - 1)) functions"
