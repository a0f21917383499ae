"""Test helpers: the blocking etcd v2 client under its short name, and polling waits.

Tests set up and check etcd state with plain blocking HTTP
(:class:`etcdmirror.localclient.BlockingClient`, called ``V2`` here) instead
of the Twisted client under test, so a bug in etcd-mirror's own client cannot
hide itself by being used to verify its own results.
"""

import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

from etcdmirror.localclient import BlockingClient

__all__ = ["V2", "wait_for", "wait_same", "persisted_index", "TreeReader", "run_command"]

#: ``V2(url)``: every method returns ``(status, body, headers)``; see BlockingClient.
V2 = BlockingClient


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 15.0,
    interval: float = 0.05,
    message: str = "",
) -> Any:
    """Poll ``predicate()`` until it returns something truthy; return that.

    Replaces fixed sleeps: fast when things are fast, patient when the
    machine is slow.  An exception from the predicate counts as "not yet"
    (a server may be restarting), and is reported if time runs out.
    Raises AssertionError with ``message`` and the last value on timeout.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - reported below
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(
                "timed out after %.1fs waiting for %s; last value: %r"
                % (timeout, message or getattr(predicate, "__name__", "condition"), last)
            )
        time.sleep(interval)


def wait_same(src: "V2", dst: "V2", src_prefix: str, dst_root: str,
              timeout: float = 30.0) -> Dict[str, Tuple[bool, Optional[str], bool]]:
    """Until the destination image equals the source prefix; returns the tree."""
    def check():
        tree = src.tree(src_prefix)
        return (tree,) if tree == dst.tree(dst_root) else None
    return wait_for(check, timeout=timeout,
                    message=f"{dst_root} on the destination equal to {src_prefix}")[0]


def persisted_index(dst: "V2", key: str = "/__replication/replica") -> Optional[int]:
    """The replication index the mirror persisted on the destination, or None."""
    status, body, _ = dst.get(key)
    return int(body["node"]["value"]) if status == 200 else None


class TreeReader(threading.Thread):
    """Polls a destination subtree like confd would, recording every view it gets.

    Used to prove that a reload or resync never makes a key vanish that
    exists before and after it.
    """

    def __init__(self, client: "V2", root: str) -> None:
        super().__init__(daemon=True)
        self.client, self.root = client, root
        self.views: list = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.views.append(set(self.client.tree(self.root)))

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def run_command(function: str, *args: str, timeout: float = 60.0):
    """Run one of etcdmirror.cli's commands (``verify_main``...) as a real process.

    Through ``python -c`` rather than the console script, so that it works
    from a source checkout as well as from an installed package.
    """
    import subprocess
    import sys

    prog = "etcd-mirror-" + function.replace("_main", "")
    return subprocess.run(
        [sys.executable, "-c", f"from etcdmirror.cli import {function}; "
         f"{function}(prog_name={prog!r})", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
