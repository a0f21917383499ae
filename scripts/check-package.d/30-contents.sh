# shellcheck shell=bash
# scripts/check-package, part 30: what the packages hold and depend on.
#
# etcd-mirror must ship the commands, the unit, the man pages, README.Debian,
# the example and /etc/etcd-mirror/; the demo and the local-etcd harness
# belong to etcd-mirror-demo only, and no package may ship the tests as a
# top-level "tests" module.  etcd-mirror must depend on each library of
# setup.py's install_requires with its lower bound (bookworm's versions, read
# by depends.py) and on Twisted's TLS extra, and not on etcd-server (not
# even as Recommends): only etcd-mirror-demo, which starts etcd servers of
# its own, depends on it.
#
# Sourced by the driver, scripts/check-package (not run alone), in ROOT with
# set -euo pipefail.  Uses from it: WORK, PARTS, PY3, VERSION, pass, fail;
# from part 20: DEB, DEMO_DEB, SRCDIR.

# What the packages hold.
dpkg-deb -c "$DEB" | awk '{print $6}' | sed 's#^\./#/#' >"$WORK/contents"
dpkg-deb -c "$DEMO_DEB" | awk '{print $6}' | sed 's#^\./#/#' >"$WORK/contents-demo"
problems=()
for f in /usr/bin/etcd-mirror /usr/bin/etcd-mirror-verify /usr/bin/etcd-mirror-freshness \
         /usr/bin/etcd-mirror-wait /usr/bin/etcd-mirror-switchover \
         /lib/systemd/system/etcd-mirror@.service \
         /usr/share/man/man1/etcd-mirror.1.gz /usr/share/man/man1/etcd-mirror-verify.1.gz \
         /usr/share/man/man1/etcd-mirror-freshness.1.gz \
         /usr/share/man/man1/etcd-mirror-wait.1.gz \
         /usr/share/man/man1/etcd-mirror-switchover.1.gz /usr/share/doc/etcd-mirror/README.Debian \
         /usr/share/doc/etcd-mirror/examples/etcd-mirror.example.conf \
         /usr/lib/python3/dist-packages/etcdmirror/cli.py /etc/etcd-mirror/; do
    grep -qxF "$f" "$WORK/contents" || problems+=("missing $f")
done
# The demo and what it runs on (local etcd servers, a blocking client, the
# mirror as a child process) are not part of the runtime package.
for f in /usr/bin/etcd-mirror-demo /usr/lib/python3/dist-packages/etcdmirror/demo.py \
         /usr/lib/python3/dist-packages/etcdmirror/localetcd.py \
         /usr/lib/python3/dist-packages/etcdmirror/localclient.py \
         /usr/lib/python3/dist-packages/etcdmirror/localmirror.py \
         /usr/share/man/man1/etcd-mirror-demo.1.gz; do
    grep -qxF "$f" "$WORK/contents" && problems+=("etcd-mirror ships $f")
    grep -qxF "$f" "$WORK/contents-demo" || problems+=("etcd-mirror-demo lacks $f")
done
if grep -q '^/usr/lib/python3/dist-packages/tests/' "$WORK/contents" "$WORK/contents-demo"; then
    problems+=("ships the tests as a top-level 'tests' package")
fi
# Each library with the lower bound setup.py gives it (bookworm's versions),
# and Twisted's TLS extra; etcd-server only for the demo.
depends=$(dpkg-deb -f "$DEB" Depends)
wanted=$($PY3 "$PARTS/depends.py" "$SRCDIR/setup.py")
[ -n "$wanted" ] || problems+=("could not read install_requires from setup.py")
while IFS= read -r dep; do
    [ -n "$dep" ] || continue
    grep -qE "(^|, )${dep//[()]/[()]}( \(|,|$)" <<<"$depends" || problems+=("Depends lacks $dep")
done <<<"$wanted"
for field in Pre-Depends Depends Recommends; do
    grep -qE '(^|, )etcd-server( |,|$)' <<<"$(dpkg-deb -f "$DEB" "$field")" \
        && problems+=("etcd-mirror $field etcd-server")
done
demo_depends=$(dpkg-deb -f "$DEMO_DEB" Depends)
for dep in "etcd-mirror (= $VERSION)" etcd-server; do
    grep -qF "$dep" <<<"$demo_depends" || problems+=("etcd-mirror-demo Depends lacks $dep")
done
if [ ${#problems[@]} -eq 0 ]; then
    pass "contents: commands, unit, man pages, examples; demo and localetcd only in etcd-mirror-demo; Depends: $depends"
    pass "contents: etcd-mirror-demo Depends: $demo_depends"
else
    fail "contents: $(IFS=';'; echo "${problems[*]}")"
fi
