#!/bin/sh
# root=gse: the GSE mount hook mounts the root; tell dracut that is fine.
# shellcheck disable=SC2034  # rootok is read by dracut
if [ "$(getarg root=)" = "gse" ]; then
	rootok=1
fi
