#!/bin/sh
# The VM suite's reporter (tests/src/vm.rs), started by OpenRC or systemd after
# gsed: waits for the verdict and prints what the host asserts on to the
# console (under systemd also how the boot went: units, systemd-analyze), then
# powers off. gse.test=hold on the kernel command line keeps the machine running (the
# host pulls the power); gse.test=servers reports the current server every second
# until it changes; gse.test=logs also reports the log archive and, from the
# first red boot in it, gsed's and early boot's lines; gse.test=update checks
# the channel and reports the update's state every second until it settles.
mode=report
read -r cmdline </proc/cmdline
for w in $cmdline; do
	case "$w" in gse.test=*) mode="${w#gse.test=}" ;; esac
done
say() { echo "$*" >/dev/console; }
i=0
while [ $i -lt 240 ]; do
	h=$(gsectl health --json 2>/dev/null)
	case "$h" in *'"status":"green"'* | *'"status":"red"'*) break ;; esac
	i=$((i + 1))
	sleep 1
done
say "GSE-HEALTH-JSON: $h"
say "GSE-BOOT-JSON: $(tr -d '\n' </run/gse/boot.json)"
say "GSE-MOTD: $(head -n 1 /etc/motd)"
say "GSE-UNAME: $(uname -r)"
say "GSE-ROOTFS: / $(awk '$2 == "/" { t = $3 } END { print t }' /proc/mounts), /user-data $(awk '$2 == "/user-data" { t = $3 } END { print t }' /proc/mounts)"
say "GSE-FILESYSTEMS: $(awk '{ print $NF }' /proc/filesystems | paste -sd, -)"
as() { u=$1; shift; setpriv --reuid="$u" --regid="$u" --init-groups "$@" >/dev/null 2>&1; echo $?; }
say "GSE-POLICY: student-read=$(as student gsectl servers) student-unpin=$(as student gsectl servers unpin) labadmin-unpin=$(as labadmin gsectl servers unpin)"
say "GSE-POLICY-DENIED: $(setpriv --reuid=student --regid=student --init-groups gsectl servers unpin 2>&1 >/dev/null | head -n 1)"
if [ -d /run/systemd/system ]; then
	# The boot is finished once no job is left; then failed units are final.
	# gse-boot-complete is a oneshot: it ran and passed if its main process
	# exited (code 1, CLD_EXITED) with status 0.
	state=$(timeout 120 systemctl is-system-running --wait)
	failed=$(systemctl --failed --plain --no-legend | awk '{ print $1 }' | paste -sd, -)
	say "GSE-SYSTEMD: state=$state gsed=$(systemctl show -P Type gsed)/$(systemctl is-active gsed) boot-complete=$(systemctl show -P Result gse-boot-complete)/$(systemctl show -P ExecMainCode gse-boot-complete)/$(systemctl show -P ExecMainStatus gse-boot-complete) failed=${failed:-none}"
	say "GSE-ANALYZE: $(systemd-analyze | head -n 1)"
	say "GSE-BLAME: $(systemd-analyze blame | grep -e gse -e gsed | tr -s ' ' | paste -sd, -)"
fi
case "$mode" in
logs)
	gsectl logs list | while IFS= read -r l; do say "GSE-LOGS: $l"; done
	red=$(gsectl logs list | awk '$7 == "red" { print $1; exit }')
	{
		gsectl logs show "$red" --unit gsed | grep -m 2 'lab share is not mounted'
		gsectl logs show "$red" --unit early | grep -m 2 -e 'gse: initramfs' -e 'gsed --early ready'
	} | while IFS= read -r l; do say "GSE-LOGSHOW: $l"; done
	;;
update)
	gsectl update check >/dev/null 2>&1
	i=0
	while [ $i -lt 900 ]; do
		u=$(gsectl update --json 2>&1 | tr -d '\n')
		say "GSE-UPDATE: $u"
		case "$u" in *'"state": "installed"'* | *'"state": "failed"'* | *'"state": "error"'* | *'"state": "up-to-date"'*) break ;; esac
		i=$((i + 1))
		sleep 1
	done
	;;
hold)
	say "GSE-HOLDING"
	exec sleep infinity
	;;
servers)
	first=""
	i=0
	while [ $i -lt 180 ]; do
		cur=$(gsectl servers | sed -n 's/^Current: //p')
		say "GSE-SERVERS: pid=$(busybox pidof gsed) current=$cur"
		[ -z "$first" ] && [ "$cur" != none ] && first=$cur
		[ -n "$first" ] && [ "$cur" != "$first" ] && [ "$cur" != none ] && break
		i=$((i + 1))
		sleep 1
	done
	;;
esac
if [ -d /run/systemd/system ]; then
	systemctl --no-block poweroff
else
	openrc-shutdown -p now
fi
