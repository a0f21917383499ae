# shellcheck shell=bash
# scripts/check-package, part 10: what the checks need.
#
# Installs with apt whatever the later parts use and is not installed yet:
# the Debian build tools and lintian, systemd (systemd-analyze), Puppet,
# puppet-lint and Ruby (the template), man-db, and for the smoke test
# etcd-server, python3-seccomp and the daemon's libraries as Debian packages.
# One PASS line ("all installed" or what it installed); when apt fails, a
# FAIL line and the summary, and the check stops here: nothing else could run.
#
# Sourced by the driver, scripts/check-package (not run alone), in ROOT with
# set -euo pipefail.  Uses from it: WORK, APT (apt-get, with sudo when not
# root), pass, fail, show, summary.

NEEDED=(debhelper dh-python python3-all python3-setuptools build-essential fakeroot
        lintian systemd puppet puppet-lint ruby man-db etcd-server python3-seccomp
        python3-twisted python3-treq python3-etcd python3-prometheus-client python3-click)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
missing=()
for pkg in "${NEEDED[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "check-package: installing ${missing[*]}"
    if "${APT[@]}" update >"$WORK/apt.log" 2>&1 \
        && "${APT[@]}" install -y --no-install-recommends "${missing[@]}" >>"$WORK/apt.log" 2>&1; then
        pass "prerequisites: installed ${missing[*]}"
    else
        fail "prerequisites: apt-get could not install ${missing[*]}"
        show "$WORK/apt.log"
        summary
        exit 1
    fi
else
    pass "prerequisites: all installed"
fi
