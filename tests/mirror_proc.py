"""The ``mirror`` fixture's factory: real ``etcd-mirror`` processes for one test.

Each is an :class:`etcdmirror.localmirror.MirrorProcess`: the real command,
started as an operator would start it, controlled by its pid and observed
through its HTTP interface and its log.
"""

import sys
from typing import Any, List

from etcdmirror.localmirror import MirrorProcess

__all__ = ["MirrorFactory", "MirrorProcess"]


class MirrorFactory:
    """Starts mirrors for one test and stops every one of them afterwards."""

    def __init__(self) -> None:
        self.made: List[MirrorProcess] = []

    def __call__(self, src: str, dst: str, *args: str, start: bool = True,
                 healthy: bool = True, **kwargs: Any) -> MirrorProcess:
        mirror = MirrorProcess(src, dst, args, **kwargs)
        self.made.append(mirror)
        if start:
            mirror.start(healthy=healthy)
        return mirror

    def cleanup(self, failed: bool = False) -> None:
        for mirror in self.made:
            if failed and mirror.proc is not None:
                sys.stderr.write(f"--- mirror log ({' '.join(mirror.args)}):\n{mirror.log()}\n")
            mirror.cleanup()
        self.made.clear()
