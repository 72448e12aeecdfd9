#!/bin/bash
# dracut module for GSE early boot. Install this directory as
# /usr/lib/dracut/modules.d/90gse and gse-hook.sh as /usr/lib/gse/gse-hook.sh
# (`gsectl image build --install-gse` does both), then `dracut --add gse` and
# boot with root=gse: the GSE hook mounts the root itself. In a systemd initrd
# (dracut's default where systemd is installed) gse-root.service runs the hook
# before sysroot.mount; in the shell initrd (--omit systemd) a mount hook does.
# shellcheck disable=SC2034,SC2154  # dracut reads and sets these variables

check() {
	require_binaries gsed gsectl || return 1
	return 255 # only when asked for (dracut --add gse)
}

depends() {
	echo base
}

# The filesystems of the layout, and the wired NIC drivers: gsed --early brings
# up the network to sync config.d before the decision.
installkernel() {
	hostonly='' instmods overlay ext4 btrfs virtio_net =drivers/net/ethernet
}

install() {
	inst_multiple gsed gsectl mount umount blkid sleep mkdir grep
	inst_multiple -o btrfs findfs
	inst_simple /usr/lib/gse/gse-hook.sh /usr/lib/gse/gse-hook.sh
	if [ -d /usr/share/gse/config.d ]; then
		inst_dir /usr/share/gse
		find /usr/share/gse/config.d -type f -print0 | while IFS= read -r -d '' f; do
			inst_simple "$f" "$f"
		done
	fi
	inst_hook cmdline 50 "$moddir/parse-gse.sh"
	if dracut_module_included "systemd"; then
		inst_simple "$moddir/gse-root.service" "$systemdsystemunitdir/gse-root.service"
		mkdir -p "$initdir$systemdsystemunitdir/initrd-root-fs.target.wants"
		ln_r "$systemdsystemunitdir/gse-root.service" "$systemdsystemunitdir/initrd-root-fs.target.wants/gse-root.service"
	else
		inst_hook mount 50 "$moddir/mount-gse.sh"
	fi
}
