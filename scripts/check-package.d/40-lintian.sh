# shellcheck shell=bash
# scripts/check-package, part 40: lintian.
#
# lintian on the source package and both binary packages, through the
# .changes file.  Any warning fails (overrides need a reason in
# debian/*lintian-overrides); info and pedantic tags are shown on the PASS
# line, not counted.
#
# Sourced by the driver, scripts/check-package (not run alone), in ROOT with
# set -euo pipefail.  Uses from it: WORK, pass, fail, show; from part 20:
# CHANGES.

lintian_rc=0
lintian --fail-on error,warning --info --pedantic "$CHANGES" >"$WORK/lintian.log" 2>&1 || lintian_rc=$?
sed -i '/running with root privileges is not recommended/d' "$WORK/lintian.log"
if [ "$lintian_rc" -eq 0 ]; then
    pass "lintian --fail-on error,warning: source, etcd-mirror, etcd-mirror-demo$(grep -q . "$WORK/lintian.log" && echo " (other tags: $(cut -d' ' -f1-3 "$WORK/lintian.log" | sort -u | tr '\n' ' '))")"
else
    fail "lintian --fail-on error,warning (exit status $lintian_rc)"
    show "$WORK/lintian.log"
fi
