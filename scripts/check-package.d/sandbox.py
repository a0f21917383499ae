"""sandbox.py prepare UNIT OUT.json: what of UNIT's sandbox to rebuild.
sandbox.py exec OUT.json COMMAND...: load the system call filter, exec.

90-smoke.sh (scripts/check-package) copies this file into the smoke test's
directory and runs "prepare" on the installed unit; smoke.py then starts
/usr/bin/etcd-mirror through "exec", as nobody, with Debian's python3 and its
python3-seccomp.  OUT.json holds the allowed system calls (None: no filter),
the errno name for the others (None: the process is killed) and the /proc
mount options ("hidepid=...,subset=pid").
"""
import errno
import json
import os
import re
import subprocess
import sys


def unit_settings(path):
    found = {}
    for line in open(path):
        m = re.match(r"\s*([A-Za-z]+)=(.*?)\s*$", line)
        if m:
            found.setdefault(m.group(1), []).append(m.group(2))
    return found


def expand(names):
    """Syscall names of a list of names and @groups, as systemd 252 knows them."""
    result = set()
    for name in names:
        if not name.startswith("@"):
            result.add(name)
            continue
        text = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", name],
                              capture_output=True, text=True, check=True).stdout
        entries = [line.strip() for line in text.splitlines()[1:]]
        result |= expand([e for e in entries if e and not e.startswith("#")])
    return result


def prepare(unit, out):
    settings = unit_settings(unit)
    allow = None
    for value in settings.get("SystemCallFilter", []):
        deny = value.startswith("~")
        names = expand(value.lstrip("~").split())
        if allow is None:
            if deny:
                sys.exit("sandbox.py: a deny-list SystemCallFilter= is not rebuilt")
            allow = expand(["@default"])  # systemd adds it to an allow list
        allow = allow - names if deny else allow | names
    errno_name = (settings.get("SystemCallErrorNumber") or [None])[-1]
    proc = []
    protect = (settings.get("ProtectProc") or ["default"])[-1]
    if protect != "default":
        proc.append("hidepid=" + protect)
    if (settings.get("ProcSubset") or ["all"])[-1] == "pid":
        proc.append("subset=pid")
    json.dump({"allow": sorted(allow) if allow is not None else None, "errno": errno_name,
               "proc": ",".join(proc)}, open(out, "w"))


def run(config, command):
    config = json.load(open(config))
    if config["allow"] is not None:
        import seccomp
        action = seccomp.ERRNO(getattr(errno, config["errno"])) if config["errno"] else seccomp.KILL_PROCESS
        f = seccomp.SyscallFilter(defaction=action)
        for name in config["allow"]:
            try:
                f.add_rule(seccomp.ALLOW, name)
            except (RuntimeError, ValueError):
                pass  # unknown to this libseccomp (or to this architecture)
        f.load()
    os.execv(command[0], command)


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(*sys.argv[2:4])
    else:
        run(sys.argv[2], sys.argv[3:])
