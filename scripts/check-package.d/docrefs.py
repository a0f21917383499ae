"""docrefs.py [FILE...]: every /usr/share/doc/etcd-mirror... path named by
the installed unit, README.Debian, the example config, the installed man
pages (of both packages) and each FILE must exist on this machine; prints one
"PASS doc references: ..." or "FAIL doc references: ..." line.

Run by 60-installed-files.sh (scripts/check-package) once the packages are
installed, with the Puppet template as FILE.  dh_compress renames files
(README.md -> README.md.gz), so a path that was right in the tree can be
wrong in the package.
"""
import gzip, os, re, subprocess, sys
files = ["/lib/systemd/system/etcd-mirror@.service", "/usr/share/doc/etcd-mirror/README.Debian",
         "/usr/share/doc/etcd-mirror/examples/etcd-mirror.example.conf"] + sys.argv[1:]
for package in ("etcd-mirror", "etcd-mirror-demo"):
    files += [f for f in subprocess.run(["dpkg", "-L", package], capture_output=True, text=True,
                                        check=True).stdout.split() if f.startswith("/usr/share/man/")
              and f.endswith(".gz")]
missing, seen = [], set()
for f in files:
    text = gzip.open(f, "rt").read() if f.endswith(".gz") else open(f).read()
    text = text.replace("\\-", "-").replace("\\&", "").replace("\\e", "")
    for ref in re.findall(r"/usr/share/doc/etcd-mirror[^\s'\"),;]*", text):
        ref = ref.rstrip(".")
        seen.add(ref)
        if not os.path.exists(ref):
            missing.append("%s (in %s)" % (ref, f))
print(("FAIL doc references: " + "; ".join(sorted(set(missing)))) if missing else
      "PASS doc references: %d paths named by the unit, README.Debian, the example, the man "
      "pages and the Puppet template exist: %s" % (len(seen), " ".join(sorted(seen))))
