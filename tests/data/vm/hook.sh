#!/bin/sh
# Image hook of the VM suite (tests/src/vm.rs), run by `gsectl image build` in
# the client root after --install-gse: the reporter service in the default
# runlevel's reach, a lab administrator (group gse) and a student.
set -e
install -m 0755 /tmp/gse-test-report.initd /etc/init.d/gse-test-report
install -D -m 0755 /tmp/gse-test-report.sh /usr/local/sbin/gse-test-report
rm /tmp/gse-test-report.initd /tmp/gse-test-report.sh
useradd --no-create-home --groups gse labadmin
useradd --no-create-home student
