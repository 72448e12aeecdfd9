#!/bin/sh
# The VM suite's reporter (tests/src/vm.rs), started by OpenRC after gsed: waits
# for the verdict and prints what the host asserts on to the console, then powers
# off. gse.test=hold on the kernel command line keeps the machine running (the
# host pulls the power); gse.test=servers reports the current server every second
# until it changes; gse.test=logs also reports the log archive and, from the
# first red boot in it, gsed's and early boot's lines.
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
as() { u=$1; shift; setpriv --reuid="$u" --regid="$u" --init-groups "$@" >/dev/null 2>&1; echo $?; }
say "GSE-POLICY: student-read=$(as student gsectl servers) student-unpin=$(as student gsectl servers unpin) labadmin-unpin=$(as labadmin gsectl servers unpin)"
say "GSE-POLICY-DENIED: $(setpriv --reuid=student --regid=student --init-groups gsectl servers unpin 2>&1 >/dev/null | head -n 1)"
case "$mode" in
logs)
	gsectl logs list | while IFS= read -r l; do say "GSE-LOGS: $l"; done
	red=$(gsectl logs list | awk '$7 == "red" { print $1; exit }')
	{
		gsectl logs show "$red" --unit gsed | grep -m 2 'lab share is not mounted'
		gsectl logs show "$red" --unit early | grep -m 2 -e 'gse: initramfs' -e 'gsed --early ready'
	} | while IFS= read -r l; do say "GSE-LOGSHOW: $l"; done
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
openrc-shutdown -p now
