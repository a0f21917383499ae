"""Hostile or broken answers never escape as anything but an etcd error type.

Property tests of the answer parser (:func:`etcdmirror.answers.parse_answer`):
whatever bytes, status and headers arrive (junk, truncated JSON, HTML error
pages, wrong types, huge values), the result is a usable :class:`Answer` or
an ``EtcdException`` (:class:`BadResponse`/:class:`EtcdUnavailable` are
retried, the others stop the mirror with the cause); never a KeyError,
TypeError or AttributeError in the middle of the reactor.
"""

import json

import etcd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcdmirror.answers import Answer, error_for, is_transient, parse_answer

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20)
node_like = st.fixed_dictionaries({}, optional={
    "key": st.one_of(st.text(max_size=20), scalars), "value": scalars,
    "dir": scalars, "ttl": scalars, "modifiedIndex": scalars, "createdIndex": scalars,
    "nodes": st.one_of(scalars, st.lists(json_values, max_size=3)),
})
payloads = st.fixed_dictionaries({}, optional={
    "action": st.one_of(st.sampled_from(["set", "delete", "get", "expire"]), scalars),
    "node": st.one_of(node_like, json_values), "prevNode": st.one_of(node_like, scalars),
    "errorCode": st.one_of(st.sampled_from([100, 101, 102, 105, 110, 300, 401]), scalars),
    "message": scalars, "cause": scalars, "index": scalars,
})


def parse(body, code, etcd_index):
    try:
        answer = parse_answer(body, code, etcd_index, "cid", "GET '/k' on src")
    except etcd.EtcdException as e:
        assert "GET '/k' on src" in str(e)
        return None
    assert isinstance(answer, Answer)
    event, result = answer.event, answer.result
    assert isinstance(event.action, str) and isinstance(event.modifiedIndex, (int, type(None)))
    # Only the keyspace's root (no key) comes without an index to order it by.
    assert event.key is None or isinstance(event.modifiedIndex, int)
    list(result.get_subtree())  # a usable tree, whatever the nesting
    # Our event and python-etcd's result read the answer the same way.
    for name in ("action", "key", "value", "ttl", "expiration", "modifiedIndex"):
        assert getattr(event, name) == getattr(result, name)
    assert event.dir is bool(result.dir)
    prev = getattr(result, "_prev_node", None)
    assert (event.prevNode is None) == (prev is None)
    if prev is not None:
        for name in ("key", "value", "ttl", "expiration", "modifiedIndex"):
            assert getattr(event.prevNode, name) == getattr(prev, name)
        assert event.prevNode.dir is bool(prev.dir)
    return answer


@settings(max_examples=400, deadline=None)
@given(body=st.binary(max_size=300), code=st.integers(100, 599),
       etcd_index=st.one_of(st.none(), st.integers(0, 2**40)))
def test_any_bytes(body, code, etcd_index):
    parse(body, code, etcd_index)


@settings(max_examples=600, deadline=None)
@given(payload=payloads, code=st.sampled_from([200, 201, 400, 401, 403, 404, 412, 500, 503]),
       etcd_index=st.one_of(st.none(), st.integers(0, 2**40)))
def test_any_json_shape(payload, code, etcd_index):
    parse(json.dumps(payload).encode(), code, etcd_index)


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(0, 200))
def test_truncated_bodies(cut):
    body = json.dumps({"action": "set", "node": {"key": "/a", "value": "x" * 100,
                                                 "modifiedIndex": 7}}).encode()
    answer = parse(body[:cut], 200, 7)
    assert answer is None or cut >= len(body)


def test_well_formed_answers_parse():
    body = json.dumps({"action": "compareAndSwap",
                       "node": {"key": "/a", "value": "2", "modifiedIndex": 9, "ttl": 5},
                       "prevNode": {"key": "/a", "value": "1", "modifiedIndex": 8}}).encode()
    answer = parse(body, 200, 9)
    assert answer.event.value == "2" and answer.event.prevNode.value == "1"
    assert answer.event.ttl == 5 and answer.event.modifiedIndex == 9
    assert parse(b"<html><body>502 Bad Gateway</body></html>", 502, None) is None
    assert parse(b"", 200, 5) is None
    # An event etcd would never send: a key without modifiedIndex cannot be ordered.
    assert parse(json.dumps({"action": "set", "node": {"key": "/a", "value": "1"}}).encode(),
                 200, 9) is None
    # The keyspace's root in a read has neither key nor modifiedIndex.
    root = parse(json.dumps({"action": "get", "node": {"dir": True, "nodes": [
        {"key": "/a", "value": "1", "modifiedIndex": 3}]}}).encode(), 200, 9)
    assert root.event.key is None and root.event.modifiedIndex is None


def test_error_mapping():
    """errorCode decides (etcd sends some state errors as HTTP 403), the status only without one."""
    def error(code, payload, etcd_index=7):
        body = json.dumps(payload).encode() if payload is not None else b"<html>oops</html>"
        return error_for(code, payload, body, etcd_index, "cid", "PUT '/k' on dst")

    not_a_file = error(403, {"errorCode": 102, "message": "Not a file", "index": 7})
    assert isinstance(not_a_file, etcd.EtcdNotFile) and not is_transient(not_a_file)
    assert str(not_a_file).startswith("PUT '/k' on dst: ")
    assert (not_a_file.etcd_index, not_a_file.cluster_id) == (7, "cid")
    assert isinstance(error(401, None), etcd.EtcdInsufficientPermissions)
    assert isinstance(error(200, {"errorCode": 110, "message": "denied"}),
                      etcd.EtcdInsufficientPermissions)
    cleared = error(400, {"errorCode": 401, "message": "The event in requested index is outdated "
                          "and cleared", "index": 2000})
    assert isinstance(cleared, etcd.EtcdEventIndexCleared)
    assert is_transient(error(503, None)) and is_transient(error(200, None))
    assert is_transient(error(500, {"errorCode": 300, "message": "Raft Internal Error"}))
    # What parse_answer raises for an error answer is what error_for maps it to.
    with pytest.raises(etcd.EtcdNotFile):
        parse_answer(json.dumps({"errorCode": 102, "message": "Not a file"}).encode(), 403, 7,
                     None, "PUT '/k' on dst")
