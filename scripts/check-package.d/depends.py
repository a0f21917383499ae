"""depends.py SETUP.PY: the Debian Depends that setup.py's install_requires
asks for, one a line: each library as python3-NAME (>= its lower bound, which
setup.py sets to bookworm's version), and python3-openssl and
python3-service-identity for Twisted's [tls] extra.

Run by 30-contents.sh (scripts/check-package), which checks that the built
etcd-mirror package depends on each of them.
"""
import re, sys
names = {"twisted": "python3-twisted", "treq": "python3-treq", "python-etcd": "python3-etcd",
         "prometheus-client": "python3-prometheus-client", "click": "python3-click"}
text = open(sys.argv[1]).read()
block = re.search(r"install_requires=\[(.*?)\n\s*\]", text, re.S).group(1)
for name, extra, version in re.findall(r'"([\w-]+)(\[[\w,]+\])?>=([\d.]+)"', block):
    print("%s (>= %s)" % (names.get(name, "python3-" + name), version))
    if extra == "[tls]":
        print("python3-openssl")
        print("python3-service-identity")
