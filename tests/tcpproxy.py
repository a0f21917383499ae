"""A TCP proxy a test can cut, to cut one mirror off from one cluster.

``cut()`` is a network partition, not a refused connection: connections stay
open but no byte goes through in either direction, and new connections are
accepted and then hear nothing.  ``heal()`` lets bytes through again on new
connections (what was in flight during the cut is lost, as on a real
network whose TCP connections timed out).  ``close()`` stops it all.
"""

import socket
import threading
from typing import List, Tuple


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to ``target`` (host, port) until cut."""

    def __init__(self, target: Tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: List[socket.socket] = []
        self._threads: List[threading.Thread] = []
        self._spawn(self._accept_loop)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        self._cut.set()

    def heal(self) -> None:
        """Forward again; connections open during the cut are dropped."""
        with self._lock:
            held, self._sockets = self._sockets, []
        for s in held:
            _close(s)
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        _close(self._listener)
        with self._lock:
            held, self._sockets = self._sockets, []
        for s in held:
            _close(s)
        for t in self._threads:
            t.join(timeout=5)

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._sockets.append(client)
            if self._cut.is_set():
                continue  # accepted, and then silence
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.append(upstream)
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            if self._cut.is_set():
                continue  # the partition swallows it
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            _shutdown(s)


def _shutdown(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _close(s: socket.socket) -> None:
    _shutdown(s)
    try:
        s.close()
    except OSError:
        pass
