"""The lean write client (etcdmirror/writeconn.py): answers read whole, in every shape etcd
sends (Content-Length, chunked, split anywhere), and anything else refused with the
connection dropped.  The end-to-end check, large values whose answers etcd sends
chunked, runs a real mirror between real etcd servers."""

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.python.failure import Failure

try:
    from twisted.internet.testing import StringTransport
except ImportError:  # Twisted < 21.2
    from twisted.test.proto_helpers import StringTransport

from etcdmirror.endpoints import Endpoint
from etcdmirror.writeconn import BadHttpAnswer, WriteConnection, WritePool, build_request
from tests.helpers import wait_same

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"X-Etcd-Index: 42\r\nX-Etcd-Cluster-Id: cdf818194e3a8c32\r\n")
JSON = b'{"action":"set","node":{"key":"/a","value":"v","modifiedIndex":42,"createdIndex":42}}\n'


def connection():
    conn = WriteConnection()
    transport = StringTransport()
    conn.makeConnection(transport)
    return conn, transport


def answered(d):
    got = []
    d.addBoth(got.append)
    return got


class Body:
    def __init__(self):
        self.data, self.done = b"", None

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.done = reason


def body_of(response):
    sink = Body()
    response.deliverBody(sink)
    return sink.data


def test_build_request_has_host_length_and_the_extra_headers():
    ep = Endpoint("http", "::1", 2379)
    data = build_request("PUT", ep, "/v2/keys/a?x=1", b"Accept: application/json\r\n", b"value=v")
    assert data == (b"PUT /v2/keys/a?x=1 HTTP/1.1\r\nHost: [::1]:2379\r\n"
                    b"Accept: application/json\r\nContent-Length: 7\r\n\r\nvalue=v")
    assert build_request("DELETE", Endpoint("http", "h", 1), "/v2/keys/a", b"", None) == (
        b"DELETE /v2/keys/a HTTP/1.1\r\nHost: h:1\r\n\r\n")


@pytest.mark.parametrize("split", [1, 7, 50, 10000])
def test_content_length_answer_in_pieces_then_the_connection_is_reused(split):
    conn, transport = connection()
    got = answered(conn.request(b"PUT ..."))
    assert transport.value() == b"PUT ..."
    raw = HEAD + b"Content-Length: %d\r\n\r\n" % len(JSON) + JSON
    for i in range(0, len(raw), split):
        assert got == []
        conn.dataReceived(raw[i:i + split])
    response = got[0]
    assert response.code == 200 and body_of(response) == JSON
    assert response.headers.getRawHeaders(b"X-Etcd-Index") == [b"42"]
    assert conn.usable and not transport.disconnecting
    again = answered(conn.request(b"PUT 2"))
    conn.dataReceived(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}")
    assert again[0].code == 404 and body_of(again[0]) == b"{}"


@pytest.mark.parametrize("split", [1, 3, 64, 10000])
def test_chunked_answer_in_pieces(split):
    conn, _ = connection()
    got = answered(conn.request(b"PUT ..."))
    payload = JSON * 50
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                      for part in (payload[:1000], payload[1000:1001], payload[1001:]))
    raw = HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    for i in range(0, len(raw), split):
        conn.dataReceived(raw[i:i + split])
    assert body_of(got[0]) == payload and conn.usable


def test_connection_close_answer_is_not_reused():
    conn, transport = connection()
    got = answered(conn.request(b"PUT ..."))
    conn.dataReceived(HEAD + b"Connection: close\r\nContent-Length: 2\r\n\r\n{}")
    assert got[0].code == 200 and not conn.usable and transport.disconnecting


@pytest.mark.parametrize("raw", [
    b"SPDY/3 200 OK\r\n\r\n",
    b"HTTP/1.1 abc OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd",
])
def test_an_answer_that_is_not_understood_fails_and_drops_the_connection(raw):
    conn, transport = connection()
    got = answered(conn.request(b"PUT ..."))
    conn.dataReceived(raw)
    assert isinstance(got[0], Failure) and got[0].check(BadHttpAnswer)
    assert not conn.usable and transport.disconnected


def test_extra_bytes_after_an_answer_drop_the_connection():
    conn, transport = connection()
    got = answered(conn.request(b"PUT ..."))
    conn.dataReceived(HEAD + b"Content-Length: 2\r\n\r\n{}HTTP/1.1 200")
    assert got[0].code == 200 and not conn.usable and transport.disconnecting


def test_bytes_with_no_request_in_flight_drop_the_connection():
    conn, transport = connection()
    conn.dataReceived(b"HTTP/1.1 200 OK\r\n")
    assert not conn.usable and transport.disconnected


def test_connection_lost_fails_the_request_in_flight():
    conn, _ = connection()
    got = answered(conn.request(b"PUT ..."))
    conn.dataReceived(HEAD)
    conn.connectionLost(Failure(ConnectionLost()))
    assert got[0].check(ConnectionLost) and not conn.usable


def test_cancelling_aborts_the_connection():
    conn, transport = connection()
    d = conn.request(b"PUT ...")
    got = answered(d)
    d.cancel()
    assert got[0].check(defer.CancelledError) and transport.disconnected


def test_large_values_replicate_through_chunked_answers(src, dst, mirror):
    """etcd sends answers over about 2 KB chunked: values of 3 KB and 300 KB, set,
    updated (the answer carries prevNode too) and compared-and-swapped."""
    big, bigger = "x" * 3000, "y" * 300_000
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", "/big")
    src.set("/big/a", big)
    src.set("/big/b", bigger)
    src.set("/big/a", bigger)
    src.set("/big/b", big, prevValue=bigger)
    wait_same(src, dst, "/big", "/replica/big")
    assert m.metric("etcdmirror_events_total", 'action="compareAndSwap",outcome="applied"') == 1


# -- the ordered lane: requests pipelined on one connection -------------------------

def answer(n):
    body = b'{"n":%d}' % n
    return HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body


def test_requests_made_before_the_connection_is_up_go_out_in_order_once_it_is():
    conn = WriteConnection()
    got = [answered(conn.request(b"PUT %d\r\n" % i)) for i in range(3)]
    transport = StringTransport()
    conn.makeConnection(transport)
    assert transport.value() == b"PUT 0\r\nPUT 1\r\nPUT 2\r\n"
    conn.dataReceived(answer(0) + answer(1))
    conn.dataReceived(answer(2)[:10])
    assert [body_of(g[0]) for g in got[:2]] == [b'{"n":0}', b'{"n":1}'] and got[2] == []
    conn.dataReceived(answer(2)[10:])
    assert body_of(got[2][0]) == b'{"n":2}' and conn.idle


def test_a_connection_close_answer_fails_the_requests_behind_it():
    conn, transport = connection()
    first, second = answered(conn.request(b"PUT 1")), answered(conn.request(b"PUT 2"))
    conn.dataReceived(HEAD + b"Connection: close\r\nContent-Length: 2\r\n\r\n{}")
    # At once, not when the connection is gone: nothing sent later overtakes them.
    assert first[0].code == 200 and second[0].check(ConnectionDone)
    assert transport.disconnecting and not conn.waiting


def test_one_timer_follows_the_oldest_request_s_deadline():
    clock = Clock()
    conn = WriteConnection(clock)
    transport = StringTransport()
    conn.makeConnection(transport)
    first = answered(conn.request(b"PUT 1", deadline=5.0))
    clock.advance(2)
    second = answered(conn.request(b"PUT 2", deadline=7.0))
    third = answered(conn.request(b"PUT 3", deadline=7.5))
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(2.9)                                     # t=4.9
    conn.dataReceived(answer(1))
    assert first[0].code == 200
    clock.advance(2.0)                                     # t=6.9: the second's deadline is 7
    assert second == [] and conn.usable
    clock.advance(0.2)                                     # t=7.1
    assert second[0].check(defer.CancelledError) and transport.disconnected
    assert third[0].check(ConnectionAborted) and not clock.getDelayedCalls()
    conn.connectionLost(Failure(ConnectionLost()))       # nothing left to fail


def test_a_lane_whose_connection_attempt_fails_fails_every_request_made_on_it():
    conn = WriteConnection()
    got = [answered(conn.request(b"PUT %d" % i)) for i in range(2)]
    conn.connect_failed(Failure(ConnectionLost("refused")))
    assert all(g[0].check(ConnectionLost) for g in got) and not conn.usable


def test_the_ordered_lane_stays_on_its_endpoint_while_writes_wait_there():
    pool, connects = WritePool(Clock()), []

    def connect(endpoint, conn):
        connects.append(endpoint)
        conn.makeConnection(StringTransport())
        return defer.succeed(conn)

    pool._connect = connect
    one, two = Endpoint("http", "one", 1), Endpoint("http", "two", 2)
    assert pool.lane_endpoint() is None
    first = answered(pool.ordered(one, b"PUT 1", 10))
    assert pool.lane_endpoint() == one                     # the transport sends there next
    lane = pool._lane
    lane.dataReceived(answer(1))
    assert first[0].code == 200 and pool.lane_endpoint() is None
    answered(pool.ordered(two, b"PUT 2", 10))             # idle: free to move
    assert connects == [one, two] and not lane.usable
