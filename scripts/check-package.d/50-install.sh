# shellcheck shell=bash
# scripts/check-package, part 50: install, and nothing enabled or started.
#
# Installs both .deb files with apt (--reinstall, so a rerun installs this
# build), then checks that installing enabled and started nothing: an
# operator starts etcd-mirror@NAME once its config is written, never the
# package.  The maintainer scripts must not start or enable a unit, no new
# etcd-mirror* link may appear in /etc/systemd/system, deb-systemd-helper must not record the
# unit as enabled, and (where systemd runs) no etcd-mirror@ unit is loaded.
# The packages stay installed: the later parts check the installed files.
# When apt fails, a FAIL line with its log's tail and the summary, and the
# check stops here.
#
# Sourced by the driver, scripts/check-package (not run alone), in ROOT with
# set -euo pipefail.  Uses from it: WORK, APT, VERSION, pass, fail, show,
# summary; from part 20: DEB, DEMO_DEB.  Makes WORK world-readable (apt's
# sandbox user reads the .deb files; part 90's unprivileged mirror reads
# $WORK/smoke).

# apt's sandbox user must be able to read the .deb.
chmod 755 "$WORK" "$WORK/build"
chmod 644 "$DEB" "$DEMO_DEB"
wants_before=$(find /etc/systemd/system -name 'etcd-mirror*' 2>/dev/null | sort)
if "${APT[@]}" install -y --reinstall "$DEB" "$DEMO_DEB" >"$WORK/install.log" 2>&1 \
    && [ "$(dpkg-query -W -f='${Version}' etcd-mirror)" = "$VERSION" ] \
    && [ "$(dpkg-query -W -f='${Version}' etcd-mirror-demo)" = "$VERSION" ]; then
    pass "install: apt-get install --reinstall $(basename "$DEB") $(basename "$DEMO_DEB")"
else
    fail "install: apt-get install $(basename "$DEB") $(basename "$DEMO_DEB") failed"
    show "$WORK/install.log"
    summary
    exit 1
fi

# -- (d) nothing enabled or started ------------------------------------------

problems=()
for script in postinst preinst postrm prerm; do
    f=/var/lib/dpkg/info/etcd-mirror.$script
    [ -f "$f" ] || continue
    if grep -nE '(deb-systemd-invoke|systemctl|invoke-rc\.d|service) .*(start|restart|reload)|deb-systemd-helper .*enable|systemctl .*enable' "$f" \
        | grep -v '^[0-9]*:[[:space:]]*#' >"$WORK/maint-$script"; then
        problems+=("$script: $(head -1 "$WORK/maint-$script")")
    fi
done
wants_after=$(find /etc/systemd/system -name 'etcd-mirror*' 2>/dev/null | sort)
if [ -n "$wants_after" ] && [ "$wants_after" != "$wants_before" ]; then
    problems+=("links in /etc/systemd/system: $(tr '\n' ' ' <<<"$wants_after")")
fi
if find /var/lib/systemd/deb-systemd-helper-enabled -name '*etcd-mirror*' 2>/dev/null | grep -q .; then
    problems+=("deb-systemd-helper recorded etcd-mirror as enabled")
fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null \
    && systemctl list-units --all --plain --no-legend 'etcd-mirror@*' 2>/dev/null | grep -q .; then
    problems+=("units loaded: $(systemctl list-units --all --plain --no-legend 'etcd-mirror@*' | head -3)")
fi
if [ ${#problems[@]} -eq 0 ]; then
    pass "no-autostart: maintainer scripts neither enable nor start a unit; nothing in /etc/systemd/system"
else
    fail "no-autostart: $(IFS=';'; echo "${problems[*]}")"
fi
