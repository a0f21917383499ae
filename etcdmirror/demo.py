"""``etcd-mirror-demo``: two local etcd servers and a live mirror between them.

What an SRE wants to see in the first minute: a source cluster being written
to, the mirror replaying every change into a second cluster, and the
replica's lag and status.  Everything runs on loopback with throwaway data
directories and is torn down on exit (Ctrl-C, or ``--duration``).
"""

import json
import random
import signal
import time
from typing import Optional

import click

from etcdmirror.localclient import BlockingClient
from etcdmirror.localetcd import LocalEtcd, free_port
from etcdmirror.localmirror import MirrorProcess


@click.command()
@click.option("--duration", type=float, default=0, show_default=True,
              help="Stop after this many seconds (0: run until Ctrl-C).")
@click.option("--interval", type=float, default=1.0, show_default=True,
              help="Seconds between demo writes to the source.")
def main(duration: float, interval: float) -> None:
    """Start two local etcd servers and mirror /demo from one into the other."""
    source, destination = LocalEtcd(name="demo-source"), LocalEtcd(name="demo-destination")
    mirror: Optional[MirrorProcess] = None
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    try:
        click.echo("starting two etcd servers (etcd v2 API) on loopback ...")
        source.start()
        destination.start()
        src, dst = source.url, destination.url
        src_client, dst_client = BlockingClient(src, timeout=5), BlockingClient(dst, timeout=5)
        for name in ("web1", "web2", "db1"):
            src_client.set(f"/demo/pools/{name}", '{"pooled": "yes"}')
        # The mirror logs to the terminal, next to what the demo prints.
        mirror = MirrorProcess(src, dst, ["--reload", "--src-prefix", "/demo",
                                          "--dst-prefix", "/replica"],
                               port=free_port(), inherit_output=True)
        click.echo(f"source      {src}\ndestination {dst}\n"
                   f"mirror      {' '.join(mirror.command[1:])}")
        mirror.start(healthy=False)
        status_url = f"http://127.0.0.1:{mirror.port}"
        click.echo(f"mirror HTTP {status_url}/status  {status_url}/metrics  {status_url}/lag")
        click.echo("Try: curl -s '%s/v2/keys/replica/demo?recursive=true'" % dst)
        started, n = time.monotonic(), 0
        while not stop and (duration <= 0 or time.monotonic() - started < duration):
            if not mirror.running:
                raise click.ClickException(f"the mirror exited with {mirror.returncode}")
            n += 1
            name = random.choice(("web1", "web2", "db1", "web3"))
            pooled = random.choice(("yes", "no", "inactive"))
            src_client.set(f"/demo/pools/{name}", json.dumps({"pooled": pooled}))
            src_client.set("/demo/counter", str(n))
            time.sleep(interval)
            try:
                status = mirror.status()
            except OSError:
                continue
            in_sync = dst_client.tree("/replica/demo") == src_client.tree("/demo")
            click.echo(f"write #{n}: {name} pooled={pooled}; mirror {status['state']}, "
                       f"lag {status['lag']}, replica index {status['replica_index']}, "
                       f"replica {'== source' if in_sync else 'catching up'}")
    except KeyboardInterrupt:
        pass
    finally:
        if mirror is not None:
            mirror.stop(10)
        source.cleanup()
        destination.cleanup()
        click.echo("demo stopped; etcd servers and their data removed")
