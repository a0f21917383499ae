"""``etcd-mirror-demo``: two local etcd servers and a live mirror between them.

What an SRE wants to see in the first minute: a source cluster being written
to, the mirror replaying every change into a second cluster, and the
replica's lag and status.  Everything runs on loopback with throwaway data
directories and is torn down on exit (Ctrl-C, or ``--duration``).
"""

import json
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Optional

import click

from etcdmirror.localetcd import LocalEtcd, free_port


def _call(url: str, method: str = "GET", data: Optional[Dict[str, str]] = None) -> Any:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return json.loads(e.read() or b"null")


def _tree(base: str, key: str) -> Dict[str, str]:
    answer = _call(f"{base}/v2/keys{key}?recursive=true")
    out: Dict[str, str] = {}

    def walk(node: Dict[str, Any]) -> None:
        for child in node.get("nodes", ()):
            if child.get("dir"):
                walk(child)
            else:
                out[child["key"]] = child.get("value", "")

    if answer and "node" in answer:
        walk(answer["node"])
    return out


@click.command()
@click.option("--duration", type=float, default=0, show_default=True,
              help="Stop after this many seconds (0: run until Ctrl-C).")
@click.option("--interval", type=float, default=1.0, show_default=True,
              help="Seconds between demo writes to the source.")
def main(duration: float, interval: float) -> None:
    """Start two local etcd servers and mirror /demo from one into the other."""
    source, destination = LocalEtcd(name="demo-source"), LocalEtcd(name="demo-destination")
    mirror: Optional[subprocess.Popen] = None
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    try:
        click.echo("starting two etcd servers (etcd v2 API) on loopback ...")
        source.start()
        destination.start()
        src, dst = source.url, destination.url
        for name in ("web1", "web2", "db1"):
            _call(f"{src}/v2/keys/demo/pools/{name}", "PUT", {"value": '{"pooled": "yes"}'})
        port = free_port()
        command = [sys.executable, "-m", "etcdmirror", "--reload", "--src-prefix", "/demo",
                   "--dst-prefix", "/replica", "--port", str(port), src, dst]
        click.echo(f"source      {src}\ndestination {dst}\nmirror      {' '.join(command[1:])}")
        mirror = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        status_url = f"http://127.0.0.1:{port}"
        click.echo(f"mirror HTTP {status_url}/status  {status_url}/metrics  {status_url}/lag")
        click.echo("Try: curl -s '%s/v2/keys/replica/demo?recursive=true'" % dst)
        started, n = time.monotonic(), 0
        while not stop and (duration <= 0 or time.monotonic() - started < duration):
            if mirror.poll() is not None:
                raise click.ClickException(f"the mirror exited with {mirror.returncode}")
            n += 1
            name = random.choice(("web1", "web2", "db1", "web3"))
            pooled = random.choice(("yes", "no", "inactive"))
            _call(f"{src}/v2/keys/demo/pools/{name}", "PUT", {"value": json.dumps(
                {"pooled": pooled})})
            _call(f"{src}/v2/keys/demo/counter", "PUT", {"value": str(n)})
            time.sleep(interval)
            try:
                with urllib.request.urlopen(status_url + "/status", timeout=2) as r:
                    status = json.loads(r.read())
            except OSError:
                continue
            replica = _tree(dst, "/replica/demo")
            in_sync = replica == {"/replica" + k: v for k, v in _tree(src, "/demo").items()}
            click.echo(f"write #{n}: {name} pooled={pooled}; mirror {status['state']}, "
                       f"lag {status['lag']}, replica index {status['replica_index']}, "
                       f"replica {'== source' if in_sync else 'catching up'}")
    except KeyboardInterrupt:
        pass
    finally:
        if mirror is not None and mirror.poll() is None:
            mirror.send_signal(signal.SIGTERM)
            try:
                mirror.wait(10)
            except subprocess.TimeoutExpired:
                mirror.kill()
                mirror.wait()
        source.cleanup()
        destination.cleanup()
        click.echo("demo stopped; etcd servers and their data removed")
