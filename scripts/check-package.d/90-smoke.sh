# shellcheck shell=bash
# scripts/check-package, part 90: smoke test of the installed package.
#
# Runs the installed /usr/bin/etcd-mirror between two throwaway etcd servers,
# with Debian's python3 and Debian's libraries, inside an approximation of
# the unit's sandbox (system call filter, /proc options, an unprivileged user
# without capabilities), and checks that it gets ready, serves /healthz and
# /metrics, replicates, sends watchdog pings and stops cleanly on SIGTERM.
# smoke.py does the test and prints one PASS/FAIL line per check ("smoke
# NAME: ..."); sandbox.py reads the unit's sandbox settings and applies the
# filter.  Both are copied, with etcdmirror/localetcd.py, into $WORK/smoke,
# which the unprivileged user can read and which smoke.py runs from, with
# env -i.
#
# Sourced by the driver, scripts/check-package (not run alone), in ROOT with
# set -euo pipefail, after part 50 installed the packages.  Uses from it:
# WORK (made world-readable by part 50), PARTS, PY3, pass, fail, show, tally.
# The driver's cleanup stops the etcd servers listed in $WORK/smoke/pids if
# smoke.py died before it could.

# Debian's python3 with Debian's libraries; PYTHONPATH holds only a copy of
# localetcd.py (imported as "localetcd"), so etcdmirror is the installed one.
mkdir -p "$WORK/smoke"
cp etcdmirror/localetcd.py "$WORK/smoke/localetcd.py"
cp "$PARTS/sandbox.py" "$PARTS/smoke.py" "$WORK/smoke/"

# There is no systemd to start the unit here, so the smoke test rebuilds the
# parts of its sandbox that can break a Python network daemon, from the
# installed unit: its SystemCallFilter= (as systemd 252 expands it, with
# SystemCallErrorNumber=), its /proc (ProtectProc= as hidepid=, ProcSubset=
# as subset=, in a mount namespace), and DynamicUser= with
# CapabilityBoundingSet= (nobody, no capabilities, no new privileges).  Not
# rebuilt: PrivateUsers=, PrivateTmp=, ProtectSystem= and the like, which
# only hide or lock files a mirror never touches.
if ! $PY3 "$WORK/smoke/sandbox.py" prepare /lib/systemd/system/etcd-mirror@.service "$WORK/smoke/sandbox.json" \
    >"$WORK/smoke/sandbox.log" 2>&1; then
    fail "smoke sandbox: could not read the unit's sandbox settings"
    show "$WORK/smoke/sandbox.log"
fi
chmod -R a+rX "$WORK/smoke"
smoke_rc=0
(cd "$WORK/smoke" && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 PYTHONNOUSERSITE=1 \
    PYTHONPATH="$WORK/smoke" TMPDIR="$WORK/smoke" timeout 180 "$PY3" "$WORK/smoke/smoke.py") \
    >"$WORK/smoke.out" 2>&1 || smoke_rc=$?
tally <"$WORK/smoke.out"
if [ "$smoke_rc" -ne 0 ]; then
    fail "smoke: the smoke test script exited with status $smoke_rc"
fi
