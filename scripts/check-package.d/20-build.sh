# shellcheck shell=bash
# scripts/check-package, part 20: build the packages.
#
# Builds the source package and both binary packages (etcd-mirror,
# etcd-mirror-demo) with dpkg-buildpackage from a copy of the tree, and checks
# that debian/changelog has the version etcdmirror/__init__.py has.  The copy
# holds what git would (tracked files plus new, not ignored ones), so the
# package is what a commit of this tree would build: no .venv, no build
# output, and nothing is ever written into the repo.  When the build fails, a
# FAIL line with the log's tail and the summary, and the check stops here.
#
# Sourced by the driver, scripts/check-package (not run alone), in ROOT with
# set -euo pipefail.  Uses from it: WORK, VERSION, pass, fail, show, summary.
# Sets, for the later parts: SRCDIR (the copy the packages are built from), DEB and
# DEMO_DEB (the two .deb files), CHANGES (the .changes file, for lintian).

SRCDIR="$WORK/build/etcd-mirror-$VERSION"
mkdir -p "$SRCDIR"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf - | tar -xf - -C "$SRCDIR"
else
    tar --exclude=./.venv --exclude=./.venv-debian --exclude=./.git --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=.pytest_cache -cf - . | tar -xf - -C "$SRCDIR"
fi
DEB="$WORK/build/etcd-mirror_${VERSION}_all.deb"
DEMO_DEB="$WORK/build/etcd-mirror-demo_${VERSION}_all.deb"
CHANGES="$WORK/build/etcd-mirror_${VERSION}_$(dpkg --print-architecture).changes"
start=$SECONDS
# Source and binaries: lintian checks the source package too.
if (cd "$SRCDIR" && dpkg-buildpackage -us -uc) >"$WORK/build.log" 2>&1 \
    && [ -f "$DEB" ] && [ -f "$DEMO_DEB" ] && [ -f "$CHANGES" ]; then
    changelog_version=$(cd "$SRCDIR" && dpkg-parsechangelog -S Version)
    if [ "$changelog_version" = "$VERSION" ]; then
        pass "build: $(basename "$DEB"), $(basename "$DEMO_DEB") and the source package in $((SECONDS - start)) s"
    else
        fail "build: debian/changelog says $changelog_version, etcdmirror/__init__.py says $VERSION"
    fi
else
    fail "build: dpkg-buildpackage -us -uc failed"
    show "$WORK/build.log" 40
    summary
    exit 1
fi
