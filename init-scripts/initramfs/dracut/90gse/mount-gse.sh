#!/bin/sh
# Mounts the new root at $NEWROOT through GSE's early boot.
# shellcheck disable=SC2154  # NEWROOT is set by dracut
[ "$(getarg root=)" = "gse" ] || return 0 2>/dev/null || exit 0
/bin/sh /usr/lib/gse/gse-hook.sh "$NEWROOT"
