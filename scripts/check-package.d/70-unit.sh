# shellcheck shell=bash
# scripts/check-package, part 70: the systemd unit.
#
# systemd-analyze verify on an instance of the installed template unit
# (etcd-mirror@checkpkg.service): systemd must accept every setting, and the
# binary in ExecStart= and the man page in Documentation= must exist.  The
# PASS line also gives systemd-analyze security's exposure level for the
# unit.  Works without a running systemd (in a container), where
# systemd-analyze leaves a timestamp file behind, removed here.
#
# Sourced by the driver, scripts/check-package (not run alone), in ROOT with
# set -euo pipefail, after part 50 installed the packages.  Uses from it:
# WORK, SUDO, pass, fail, show.

# Without a running systemd, systemd-analyze leaves a timestamp file behind.
units_load=/run/systemd/systemd-units-load
[ -e "$units_load" ] && units_load_existed=1 || units_load_existed=0

# As an instance of the installed template; it also checks that ExecStart's
# binary and the man page in Documentation= exist.  Warnings ("Unknown key",
# "ignoring") do not change its exit status, so any output is a failure.
if (cd "$WORK" && systemd-analyze verify etcd-mirror@checkpkg.service) >"$WORK/verify.log" 2>&1 \
    && ! grep -q . "$WORK/verify.log"; then
    # shellcheck disable=SC2015 # "|| true" is for the whole pipeline
    exposure=$(cd "$WORK" && systemd-analyze security --offline=true etcd-mirror@checkpkg.service 2>/dev/null \
        | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]* [A-Z]*\).*/\1/p' || true)
    pass "systemd-analyze verify etcd-mirror@checkpkg.service${exposure:+ (security exposure $exposure)}"
else
    fail "systemd-analyze verify etcd-mirror@checkpkg.service"
    show "$WORK/verify.log"
fi

if [ "$units_load_existed" = 0 ] && [ ! -d /run/systemd/system ]; then
    "${SUDO[@]}" rm -f "$units_load"
fi
