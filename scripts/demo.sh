#!/bin/sh
# Builds GSE and shows it working without touching this machine: a private D-Bus
# system bus with the real policy, gsed on it with a temporary --root that holds the
# shipped config.d as image defaults and two example health checks, then
# `gsectl health`. Everything is removed at the end.
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh build
# The whole workspace, as CI and the README build it: gsed's code layout
# (gsed/text-order.txt) names the symbols of that build, and `-p gsed` alone
# resolves dependency features differently (other symbol hashes, 1.7 MB more
# resident when idle).
cargo build --release -q --workspace --bins

work=$(mktemp -d /tmp/gse-demo.XXXXXX)
chmod 755 "$work"
cleanup() {
	[ -n "${gsed_pid:-}" ] && kill "$gsed_pid" 2>/dev/null && wait "$gsed_pid" 2>/dev/null
	[ -n "${bus_pid:-}" ] && kill "$bus_pid" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

sed -e "s#@SOCKET@#$work/bus.sock#" -e "s#@POLICY@#$PWD/dbus/org.gentoo.Gse1.conf#" \
	tests/data/system-bus.conf.in >"$work/bus.conf"
dbus-daemon --config-file="$work/bus.conf" --nofork --nopidfile 2>"$work/bus.log" &
bus_pid=$!
bus="unix:path=$work/bus.sock"

root="$work/root"
mkdir -p "$root/usr/share/gse" "$root/etc/gse/checks/required" "$root/etc/gse/checks/wanted"
cp -r config.d "$root/usr/share/gse/config.d"
printf '#!/bin/sh\ndf -P / >/dev/null\n' >"$root/etc/gse/checks/required/10-root-filesystem"
printf '#!/bin/sh\necho "no printer configured in this demo"\nexit 1\n' >"$root/etc/gse/checks/wanted/50-printer"
chmod +x "$root"/etc/gse/checks/*/*

for _ in $(seq 50); do [ -S "$work/bus.sock" ] && break; sleep 0.1; done
target/release/gsed --bus "$bus" --root "$root" --boot-id demo-boot-1 2>"$work/gsed.log" &
gsed_pid=$!

# Wait for a verdict (exit 2 means still starting).
for _ in $(seq 100); do
	status=0
	target/release/gsectl --bus "$bus" health >/dev/null 2>&1 || status=$?
	[ "$status" -ne 2 ] && [ "$status" -ne 3 ] && break
	sleep 0.1
done
echo "\$ gsectl health"
target/release/gsectl --bus "$bus" health || true
