#!/bin/sh
# A real OpenRC client booted twice in qemu (TCG) through GSE — the ground work of
# the whole-boot suite (issue 8), runnable by hand. Needs root, network access to
# the Debian mirror for debootstrap and the kernel package, and about 2 minutes.
#
#   1. a Debian OpenRC root (debootstrap, cached in target/vm/), made a GSE image
#      with `gsectl image build --install-gse` and a test service that prints
#      `gsectl health --json` on the console and powers off;
#   2. a disk laid out by `gsectl provision --format` (boot, a, b, user-data) on a
#      loop device, the image put into both slots by `gsectl install`;
#   3. the initramfs from `gsectl initramfs build` for Debian's cloud kernel;
#   4. two boots: the first is green and records its clean shutdown through the
#      OpenRC script, the second renews the flag (healthy_cycles goes up).
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
if ! command -v debootstrap >/dev/null || ! command -v qemu-system-x86_64 >/dev/null || ! command -v depmod >/dev/null; then
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap qemu-system-x86 kmod
fi
cargo build --release --workspace --bins -q
gsectl=$PWD/target/release/gsectl
work=$PWD/target/vm
mkdir -p "$work"
cd "$work"
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}

recipe="bookworm minbase openrc,dbus,busybox,iproute2"
if [ "$(cat debootstrap.recipe 2>/dev/null)" != "$recipe" ]; then
	rm -rf minbase
	debootstrap --variant=minbase --include=openrc,dbus,busybox,iproute2 --exclude=systemd-sysv bookworm minbase "$mirror"
	echo "$recipe" >debootstrap.recipe
fi
if [ ! -d kroot/lib/modules ]; then
	apt-get download -q linux-image-cloud-amd64
	pkg=$(dpkg-deb -f linux-image-cloud-amd64_*.deb Depends | sed 's/ .*//')
	apt-get download -q "$pkg"
	rm -rf kroot && mkdir kroot && dpkg -x "$pkg"_*.deb kroot
	depmod -b kroot "$(ls kroot/lib/modules)"
fi
kver=$(ls kroot/lib/modules)

rm -rf conf && cp -a ../../config.d conf
printf 'dbus\ngsed\ngse-test-report\n' >conf/controller/services/default-runlevel
cat >hook.sh <<'HOOK'
#!/bin/sh
set -e
cat >/etc/init.d/gse-test-report <<'SVC'
#!/sbin/openrc-run
description="GSE demo: print the health report on the console"
command="/usr/local/sbin/gse-test-report"
command_background=true
pidfile="/run/gse-test-report.pid"
depend() { need gsed; }
stop() { return 0; }
SVC
chmod 755 /etc/init.d/gse-test-report
mkdir -p /usr/local/sbin
cat >/usr/local/sbin/gse-test-report <<'SCR'
#!/bin/sh
i=0
while [ $i -lt 120 ]; do
	gsectl health --json >/tmp/h.json 2>/dev/null && break
	[ $? -eq 1 ] && break
	i=$((i + 1)); sleep 1
done
echo "GSE-HEALTH-JSON: $(cat /tmp/h.json)" >/dev/console
echo "GSE-BOOT-JSON: $(tr -d '\n' </run/gse/boot.json)" >/dev/console
openrc-shutdown -p now
SCR
chmod 755 /usr/local/sbin/gse-test-report
HOOK
rm -rf root && cp -a minbase root
"$gsectl" image build --rootfs root --version demo-1 --out image.tar.zst --install-gse --config conf --hook hook.sh --force
"$gsectl" initramfs build --kver "$kver" --modules-root kroot --out initrd.img --config conf --force

rm -f disk.img && truncate -s 1500M disk.img
loop=$(losetup -f --show -P disk.img)
cleanup() { losetup -d "$loop" 2>/dev/null || true; }
trap cleanup EXIT
sed -e "s#^device = .*#device = \"$loop\"#" -e 's/^wipe = .*/wipe = true/' \
	-e 's/size = "1G"/size = "64M"/' -e 's/size = "30G"/size = "600M"/' conf/controller/drives.conf >drives.conf
cp drives.conf conf/controller/drives.conf
mkdir -p r
unshare -m --propagation private sh -c "
	set -e
	'$gsectl' --root '$work/r' provision --format --config conf
	mount ${loop}p1 r/boot && mount ${loop}p4 r/user-data
	'$gsectl' --root '$work/r' install --image image.tar.zst --config conf
"
losetup -d "$loop"
trap - EXIT

for boot in 1 2; do
	echo "--- boot $boot (qemu, TCG)"
	timeout 300 qemu-system-x86_64 -accel tcg -m 1024 -nographic -no-reboot \
		-kernel "kroot/boot/vmlinuz-$kver" -initrd initrd.img \
		-append "console=ttyS0 root=gse init=/sbin/openrc-init panic=-1 quiet" \
		-drive file=disk.img,format=raw,if=virtio </dev/null >"boot$boot.log" 2>&1 || true
	grep -a -E '^gse: |GSE-(HEALTH|BOOT)-JSON|Recording the clean shutdown' "boot$boot.log" || {
		echo "no GSE output; see $work/boot$boot.log"
		exit 1
	}
done
