#!/bin/bash
# Figures for the health slice, printed, not asserted:
#  - `gsectl health --json` whole-process wall time, median of 20, next to
#    `busctl get-property ... Status` on the same private bus in the same run;
#  - gsed's resident memory when idle, after those calls and one each of
#    `servers`, `update` and `network` (what a desktop tool asks now and
#    then), and whether it wakes up while idle (context switches over 5 s).
# Run as root after `cargo build --release --workspace --bins`.
# GSED_WRAP runs gsed under a command (scripts/order-text.sh uses valgrind),
# GSED names another gsed binary.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-20}
work=$(mktemp -d /tmp/gse-bench.XXXXXX)
chmod 755 "$work"
trap 'kill ${gsed_pid:-} ${bus_pid:-} 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

sed -e "s#@SOCKET@#$work/bus.sock#" -e "s#@POLICY@#$PWD/dbus/org.gentoo.Gse1.conf#" \
	tests/data/system-bus.conf.in >"$work/bus.conf"
dbus-daemon --config-file="$work/bus.conf" --nofork --nopidfile 2>/dev/null &
bus_pid=$!
bus="unix:path=$work/bus.sock"
for _ in $(seq 50); do [ -S "$work/bus.sock" ] && break; sleep 0.1; done
mkdir -p "$work/root/usr/share/gse"
cp -r config.d "$work/root/usr/share/gse/config.d"
# shellcheck disable=SC2086 # GSED_WRAP is a command line
${GSED_WRAP:-} "${GSED:-target/release/gsed}" --bus "$bus" --root "$work/root" --boot-id bench 2>/dev/null &
gsed_pid=$!
until target/release/gsectl --bus "$bus" health >/dev/null 2>&1; do sleep 0.05; done

# Median wall time in milliseconds of a command run $runs times.
median_ms() {
	local times=()
	for _ in $(seq "$runs"); do
		local t0 t1
		t0=$(date +%s%N)
		"$@" >/dev/null
		t1=$(date +%s%N)
		times+=($(((t1 - t0) / 1000)))
	done
	printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m/1000}'
}

g=$(median_ms target/release/gsectl --bus "$bus" health --json)
b=$(median_ms busctl --address="$bus" get-property org.gentoo.Gse1 /org/gentoo/Gse1 org.gentoo.Gse1.Health Status)
echo "gsectl health --json: median ${g} ms over $runs runs"
echo "busctl get-property Status: median ${b} ms over $runs runs"
awk -v g="$g" -v b="$b" 'BEGIN {printf "ratio gsectl/busctl: %.2f\n", g/b}'

for c in servers update network; do target/release/gsectl --bus "$bus" "$c" >/dev/null; done
sleep 1
rss=$(awk '/VmRSS/ {print $2, $3}' "/proc/$gsed_pid/status")
anon=$(awk '/RssAnon/ {print $2, $3}' "/proc/$gsed_pid/status")
# What the resident memory is: gsed's own code pages, libc's, the heap.
own=$(awk -v exe="$(readlink "/proc/$gsed_pid/exe")" '/^[0-9a-f]+-/ {name=$6} /^Rss:/ && name==exe {s+=$2} END {print s " kB"}' "/proc/$gsed_pid/smaps")
ctx() { awk '/voluntary_ctxt_switches/ {s+=$2} END {print s}' /proc/"$gsed_pid"/task/*/status; }
c0=$(ctx)
sleep 5
c1=$(ctx)
echo "gsed idle VmRSS: $rss (private anonymous: $anon; gsed's own code and data pages: $own)"
# gsed's code layout is lost quietly, by a build of -p gsed alone (6.9 MB) or
# by a list of everyday functions gone stale: say so where the figure is read.
if [ "${rss% kB}" -gt 6144 ]; then
	echo "WARNING: above the 6 MB goal; gsed's code layout needs the build of 'cargo build --release --workspace --bins' (not -p gsed); if it was, gsed/text-order.txt is stale: run scripts/order-text.sh"
fi
awk '/^[0-9a-f]+-/ {name=$6} /^Rss:/ {r[name]+=$2} END {for (n in r) if (r[n] > 100) printf "  %6d kB %s\n", r[n], n}' "/proc/$gsed_pid/smaps" | sort -rn
echo "gsed's own mappings (permissions, size, resident):"
awk -v exe="$(readlink "/proc/$gsed_pid/exe")" '/^[0-9a-f]+-/ {name=$6; perm=$2} /^Size:/ {size=$2} /^Rss:/ && name==exe {printf "  %s %6d kB mapped, %6d kB resident\n", perm, size, $2}' "/proc/$gsed_pid/smaps"
echo "gsed context switches during 5 s idle: $((c1 - c0))"
