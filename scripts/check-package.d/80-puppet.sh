# shellcheck shell=bash
# scripts/check-package, part 80: the Puppet manifests.
#
# puppet parser validate and puppet-lint (warnings fail too) on the
# etcdmirror::instance define and the test manifests in puppet-templates/.
# What the define and its template produce is part 85's business.
#
# Sourced by the driver, scripts/check-package (not run alone), in ROOT with
# set -euo pipefail.  Uses from it: WORK, pass, fail, show.

manifests=(puppet-templates/manifests/*.pp puppet-templates/tests/*.pp)
if puppet parser validate --color=false "${manifests[@]}" >"$WORK/puppet-validate.log" 2>&1; then
    pass "puppet parser validate ${manifests[*]}"
else
    fail "puppet parser validate ${manifests[*]}"
    show "$WORK/puppet-validate.log"
fi
# Warnings fail too.  The autoloader-layout check is skipped: the folder is
# puppet-templates, not the module's name (etcdmirror).
if puppet-lint --fail-on-warnings --no-autoloader_layout-check "${manifests[@]}" >"$WORK/puppet-lint.log" 2>&1; then
    pass "puppet-lint --fail-on-warnings --no-autoloader_layout-check ${manifests[*]}"
else
    fail "puppet-lint --fail-on-warnings --no-autoloader_layout-check: $(grep -c . "$WORK/puppet-lint.log") problems"
    show "$WORK/puppet-lint.log"
fi
