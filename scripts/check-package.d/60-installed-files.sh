# shellcheck shell=bash
# scripts/check-package, part 60: what the installed files point at.
#
# Every /usr/share/doc/etcd-mirror... path named by the installed unit
# (Documentation= and comments), README.Debian, the example, the man pages
# and the Puppet template must exist once the packages are installed
# (dh_compress renames files; docrefs.py checks).  And the demo's man page
# must name every long option of etcd-mirror-demo --help.
#
# Sourced by the driver, scripts/check-package (not run alone), in ROOT with
# set -euo pipefail, after part 50 installed the packages.  Uses from it:
# ROOT, WORK, PARTS, PY3, pass, fail, show, tally.

# docrefs.py prints its own PASS or FAIL line.
$PY3 "$PARTS/docrefs.py" "$ROOT/puppet-templates/templates/instance.conf.erb" >"$WORK/docrefs.out" 2>&1 || true
tally <"$WORK/docrefs.out"
grep -qE '^(PASS|FAIL) ' "$WORK/docrefs.out" || fail "doc references: the check itself failed"

# The demo's man page names every long option of its --help.
if (cd "$WORK" && /usr/bin/etcd-mirror-demo --help) >"$WORK/demo-help.out" 2>&1; then
    undocumented=()
    page=$(zcat /usr/share/man/man1/etcd-mirror-demo.1.gz | sed 's/\\-/-/g')
    # shellcheck disable=SC2013 # one option (a single word) a line
    for option in $(sed -n 's/^  \(-[a-zA-Z], \)\?\(--[a-z0-9][a-z0-9-]*\).*/\2/p' "$WORK/demo-help.out"); do
        grep -qE -- "(^|[^-a-z])${option}([^-a-z]|$)" <<<"$page" || undocumented+=("$option")
    done
    if [ ${#undocumented[@]} -eq 0 ]; then
        pass "etcd-mirror-demo(1): documents every option of etcd-mirror-demo --help"
    else
        fail "etcd-mirror-demo(1) lacks ${undocumented[*]}"
    fi
else
    fail "etcd-mirror-demo --help failed"
    show "$WORK/demo-help.out"
fi
