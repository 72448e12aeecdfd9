#!/bin/sh
# Image hook of the VM suite (tests/src/vm.rs), run by `gsectl image build` in
# the client root after --install-gse: the reporter service for the image's
# init system, a lab administrator (group gse) and a student.
set -e
install -D -m 0755 /tmp/gse-test-report.sh /usr/local/sbin/gse-test-report
if [ -d /etc/runlevels ]; then
	install -m 0755 /tmp/gse-test-report.initd /etc/init.d/gse-test-report
else
	install -m 0644 /tmp/gse-test-report.service /etc/systemd/system/gse-test-report.service
	systemctl enable gse-test-report.service
fi
rm /tmp/gse-test-report.*
useradd --no-create-home --groups gse labadmin
useradd --no-create-home student
