#!/bin/bash
# dracut module for GSE early boot. Install this directory as
# /usr/lib/dracut/modules.d/90gse and gse-hook.sh as /usr/lib/gse/gse-hook.sh,
# then boot with root=gse (the GSE hook mounts the root itself).
# shellcheck disable=SC2034,SC2154  # dracut reads and sets these variables

check() {
	require_binaries gsed gsectl || return 1
	return 255 # only when asked for (dracut --add gse)
}

depends() {
	echo base
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
	inst_hook mount 50 "$moddir/mount-gse.sh"
}
