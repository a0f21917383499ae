"""Smoke test of the installed /usr/bin/etcd-mirror between two throwaway
etcd servers; prints one "PASS smoke NAME: ..." or "FAIL smoke NAME: ..."
line per check (libraries, ready, seccomp, healthz, metrics, replicate,
watchdog, sigterm; "error" if the test itself broke).

90-smoke.sh (scripts/check-package) copies it, sandbox.py and
etcdmirror/localetcd.py into one directory and runs it from there with
env -i, Debian's /usr/bin/python3 and PYTHONPATH holding only that directory,
so "etcdmirror" is the installed package.  The directory also receives the
notify socket, the mirror's log and "pids" (the etcd servers' pids, which
the driver's cleanup stops if this script dies before it can).  As root, the
mirror runs the way the unit's sandbox would run it (see sandbox.py).
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from localetcd import LocalEtcd

HERE = os.path.dirname(os.path.abspath(__file__))
DEBIAN = "/usr/lib/python3/dist-packages/"


def result(ok, name, detail):
    print("%s smoke %s: %s" % ("PASS" if ok else "FAIL", name, detail), flush=True)
    return ok


def put(url, key, value):
    data = urllib.parse.urlencode({"value": value}).encode()
    req = urllib.request.Request(url + "/v2/keys" + key, data=data, method="PUT")
    urllib.request.urlopen(req, timeout=5).read()


def get(url, key):
    try:
        with urllib.request.urlopen(url + "/v2/keys" + key, timeout=5) as r:
            return json.load(r)["node"].get("value")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def wait(condition, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    return condition()


def main():
    import importlib
    modules = ["etcdmirror", "twisted", "treq", "etcd", "prometheus_client", "click"]
    foreign = [m for m in modules if not importlib.import_module(m).__file__.startswith(DEBIAN)]
    result(not foreign, "libraries", "etcdmirror and its libraries come from " + DEBIAN
           if not foreign else "not from %s: %s" % (DEBIAN, foreign))

    src, dst = LocalEtcd(name="checkpkg-src"), LocalEtcd(name="checkpkg-dst")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(os.path.join(HERE, "notify.sock"))
    os.chmod(os.path.join(HERE, "notify.sock"), 0o666)
    notify.settimeout(0.2)
    messages = []

    def notified(what):
        try:
            while True:
                messages.extend(notify.recv(4096).decode().splitlines())
        except socket.timeout:
            pass
        return what in messages

    mirror = None
    try:
        src.start()
        dst.start()
        with open(os.path.join(HERE, "pids"), "w") as f:
            f.write("%d\n%d\n" % (src.pid, dst.pid))
        put(src.url, "/smoke/before", "0")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
               "PYTHONNOUSERSITE": "1", "NOTIFY_SOCKET": os.path.join(HERE, "notify.sock"),
               "WATCHDOG_USEC": "3000000"}
        log_path = os.path.join(HERE, "mirror.log")
        # Like the unit's DynamicUser=yes and CapabilityBoundingSet=: an
        # unprivileged user that can write nothing of its own, no capabilities;
        # then /proc and the system call filter as the unit has them (see
        # sandbox.py).
        user, sandbox = [], []
        if os.geteuid() == 0:
            user = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                    "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all"]
            sandbox.append("as nobody, no capabilities")
            config_path = os.path.join(HERE, "sandbox.json")
            if os.path.exists(config_path):
                config = json.load(open(config_path))
                if config["proc"]:
                    mount = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             'mount -t proc -o "$0" proc /proc && exec "$@"', config["proc"]]
                    if subprocess.run(mount + ["true"], capture_output=True).returncode == 0:
                        user = mount + user
                        sandbox.append("/proc " + config["proc"])
                    else:
                        sandbox.append("NOT /proc " + config["proc"] + " (no mount namespace here)")
                if config["allow"] is not None:
                    user += ["/usr/bin/python3", os.path.join(HERE, "sandbox.py"), "exec", config_path]
                    sandbox.append("SystemCallFilter= (%d calls allowed, others %s)"
                                   % (len(config["allow"]), config["errno"] or "killed"))
        with open(log_path, "wb") as log:
            mirror = subprocess.Popen(
                user + ["/usr/bin/etcd-mirror", "--reload", "--src-prefix", "/smoke",
                        "--port", "0", src.url, dst.url],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

        def log():
            with open(log_path, errors="replace") as f:
                return f.read()

        def tail():
            return "\n" + "\n".join("    | " + line for line in log().splitlines()[-15:])

        wait(lambda: mirror.poll() is not None or notified("READY=1"), 30)
        if mirror.poll() is not None:
            result(False, "ready", "etcd-mirror exited with status %d" % mirror.returncode + tail())
            return
        if not result("READY=1" in messages, "ready",
                      "/usr/bin/etcd-mirror --reload%s sent READY=1 to $NOTIFY_SOCKET"
                      % (" (%s)" % ", ".join(sandbox) if sandbox else "")
                      if "READY=1" in messages else "no READY=1 within 30 s" + tail()):
            return
        if any(part.startswith("SystemCallFilter") for part in sandbox):
            with open("/proc/%d/status" % mirror.pid) as f:
                filtered = re.search(r"^Seccomp:\s*2$", f.read(), re.M)
            result(filtered, "seccomp", "the running mirror is under the system call filter"
                   if filtered else "/proc/%d/status shows no seccomp filter" % mirror.pid)
        port = re.search(r"HTTP interface on port (\d+)", log())
        health = None
        if port:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%s/healthz" % port.group(1),
                                            timeout=5) as r:
                    health = r.status
            except urllib.error.HTTPError as e:
                health = e.code
        result(health == 200, "healthz", "GET /healthz: %s" % health + ("" if health == 200 else tail()))
        # The process_* metrics read /proc (ProtectProc=, ProcSubset= hide parts of it).
        metrics = ""
        if port:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%s/metrics" % port.group(1),
                                            timeout=5) as r:
                    metrics = r.read().decode()
            except OSError as e:
                metrics = "error: %s" % e
        wanted = ["process_resident_memory_bytes", "process_cpu_seconds_total",
                  "process_start_time_seconds", "process_open_fds", "etcdmirror_"]
        absent = [m for m in wanted if not re.search(r"^%s" % m, metrics, re.M)]
        result(not absent, "metrics", "GET /metrics has the process_* and etcdmirror_* metrics"
               if not absent else "GET /metrics lacks %s" % absent + tail())

        for i in range(20):
            put(src.url, "/smoke/k%d" % i, "v%d" % i)
        put(src.url, "/elsewhere/k", "not mirrored")
        want = {"/replica/smoke/before": "0",
                **{"/replica/smoke/k%d" % i: "v%d" % i for i in range(20)}}
        copied = wait(lambda: all(get(dst.url, k) == v for k, v in want.items()), 20)
        outside = get(dst.url, "/replica/elsewhere/k")
        result(copied and outside is None, "replicate",
               "%d keys written to the source under /smoke are on the destination under "
               "/replica/smoke, the key outside /smoke is not" % len(want) if copied and outside is None
               else "destination has %r" % {k: get(dst.url, k) for k in list(want)[:3]} + tail())
        result(wait(lambda: notified("WATCHDOG=1"), 5), "watchdog",
               "WATCHDOG=1 sent while the mirror runs" if "WATCHDOG=1" in messages else "no WATCHDOG=1" + tail())

        mirror.send_signal(signal.SIGTERM)
        try:
            code = mirror.wait(10)
        except subprocess.TimeoutExpired:
            mirror.kill()
            code = mirror.wait()
            result(False, "sigterm", "still running 10 s after SIGTERM" + tail())
        else:
            notified("STOPPING=1")
            result(code == 0 and "STOPPING=1" in messages, "sigterm",
                   "exit status %d after SIGTERM, STOPPING=1 %s" % (code, "sent" if "STOPPING=1" in messages else "NOT sent")
                   + ("" if code == 0 else tail()))
    except Exception as e:  # report, then clean up
        result(False, "error", "%s: %s" % (type(e).__name__, e))
    finally:
        if mirror is not None and mirror.poll() is None:
            mirror.kill()
            mirror.wait()
        src.cleanup()
        dst.cleanup()
        notify.close()


main()
