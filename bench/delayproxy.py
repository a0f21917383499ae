"""A TCP proxy that adds a fixed one-way delay in each direction, in order.

    python bench/delayproxy.py LISTEN_PORT TARGET_PORT DELAY_MS [--parent-pid PID]

Listens on 127.0.0.1:LISTEN_PORT (0: any free port) and forwards every
connection to 127.0.0.1:TARGET_PORT.  Every chunk read on one side is written
to the other side DELAY_MS milliseconds after it was read, so a request and its
answer together take 2 * DELAY_MS longer: use DELAY_MS = RTT / 2.  Chunks keep
their order, the end of a stream is delayed like data, and a new connection
first pays one simulated RTT (the TCP handshake a real link would need) before
its first byte is delivered.

The delay costs no CPU per chunk beyond a deque append and, for the chunk at
the head of the line, one timer: chunks that fall due together are written in
one go.  Bandwidth is not limited.

Prints ``listening on PORT`` on stdout once it accepts connections.  Exits on
SIGTERM/SIGINT, and by itself when its parent process dies (Linux parent-death
signal, plus a poll of the parent pid as a fallback), so it never outlives the
benchmark.
"""

import argparse
import asyncio
import collections
import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
# Above this much unsent data in a transport, stop reading from its peer.
_HIGH_WATER = 4 * 1024 * 1024


def die_with_parent(parent_pid: int) -> None:
    """Get SIGTERM when the parent dies (Linux); harmless elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    # The parent may have died before prctl: then we are already orphaned.
    if os.getppid() != parent_pid:
        sys.exit(0)


class DelayLine:
    """One direction: chunks go out ``delay`` seconds after they came in."""

    __slots__ = ("loop", "delay", "queue", "transport", "timer", "not_before", "closed",
                 "ended")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float, not_before: float):
        self.loop = loop
        self.delay = delay
        self.queue = collections.deque()
        self.transport = None  # where chunks go; None until connected
        self.timer = None
        # Simulated handshake: nothing is delivered before this time.
        self.not_before = not_before
        self.closed = False
        self.ended = False  # the end of the stream is queued

    def push(self, data) -> None:
        """Queue a chunk (bytes) or the end of the stream (None)."""
        if self.ended or self.closed:
            return
        if data is None:
            self.ended = True
        now = self.loop.time()
        self.queue.append((max(now, self.not_before) + self.delay, data))
        if self.timer is None and self.transport is not None:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def attach(self, transport) -> None:
        self.transport = transport
        if self.queue and self.timer is None:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        self.timer = None
        if self.closed:
            return
        now = self.loop.time()
        queue = self.queue
        chunks = []
        while queue and queue[0][0] <= now:
            data = queue.popleft()[1]
            if data is None:
                self._write(chunks)
                chunks = []
                self.close()
                return
            chunks.append(data)
        self._write(chunks)
        if queue:
            self.timer = self.loop.call_at(queue[0][0], self._flush)

    def _write(self, chunks) -> None:
        if not chunks:
            return
        self.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def close(self) -> None:
        """Close the far side (after writing what was already due)."""
        if self.closed:
            return
        self.closed = True
        self.queue.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.close()


class Side(asyncio.Protocol):
    """One end of a proxied connection; what it reads goes into ``out``."""

    def __init__(self, out: DelayLine):
        self.out = out
        self.peer = None  # the Side at the other end
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        self.out.push(data)

    def eof_received(self):
        self.out.push(None)
        return False

    def connection_lost(self, exc) -> None:
        self.out.push(None)

    # Flow control: a far side that does not read stops us reading this side.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


def make_client_side(loop, target_port: int, delay: float):
    """Protocol factory for accepted connections."""

    def factory():
        handshake_done = loop.time() + 2 * delay
        to_target = DelayLine(loop, delay, handshake_done)
        to_client = DelayLine(loop, delay, handshake_done)
        client = Side(to_target)
        target = Side(to_client)
        client.peer, target.peer = target, client

        original_made = client.connection_made

        def connection_made(transport):
            original_made(transport)
            to_client.attach(transport)
            loop.create_task(connect())

        async def connect():
            try:
                await loop.create_connection(lambda: target, "127.0.0.1", target_port)
            except OSError:
                client.transport.close()
                return
            to_target.attach(target.transport)

        client.connection_made = connection_made
        return client

    return factory


async def main(listen_port: int, target_port: int, delay_ms: float, parent_pid: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    server = await loop.create_server(
        make_client_side(loop, target_port, delay_ms / 1000.0), "127.0.0.1", listen_port,
        reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    print("listening on %d" % port, flush=True)

    async def watch_parent():
        while os.getppid() == parent_pid:
            await asyncio.sleep(0.5)
        stop.done() or stop.set_result(None)

    watcher = loop.create_task(watch_parent())
    await stop
    watcher.cancel()
    server.close()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("listen_port", type=int)
    parser.add_argument("target_port", type=int)
    parser.add_argument("delay_ms", type=float, help="one-way delay (RTT / 2)")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="exit when this process is no longer our parent "
                        "(default: the parent at start)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    parent = args.parent_pid if args.parent_pid is not None else os.getppid()
    die_with_parent(parent)
    asyncio.run(main(args.listen_port, args.target_port, args.delay_ms, parent))
