"""What a source change becomes on a v3 destination (etcdmirror/v3mapping.py): the
pure part.  The transaction's effect on a real etcd is the "mapping" scenario of
test_v3client.py."""

import re

from etcdmirror.keys import KeyMapper
from etcdmirror.v3mapping import Change, ranges_below, transaction, v2_changes, v3_changes
from etcdmirror.v3wire import KeyValue, WatchEvent, b64
from tests.fakes import v2_event as v2

MAPPER = KeyMapper("/conftool", "/replica", ignore=re.compile(r"/conftool/local/.*"))


def test_v2_keys_keep_their_path_and_compare_what_the_source_had_before():
    assert v2_changes(v2("set", "/conftool/a", "2", prev="1"), MAPPER) == [
        Change(b"/replica/conftool/a", b"2", b"1")]
    assert v2_changes(v2("create", "/conftool/b", "x", ttl=30), MAPPER) == [
        Change(b"/replica/conftool/b", b"x", None, ttl=30)]
    assert v2_changes(v2("compareAndDelete", "/conftool/a", prev="2"), MAPPER) == [
        Change(b"/replica/conftool/a", None, b"2")]


def test_v2_directories_exist_only_through_their_keys():
    assert v2_changes(v2("set", "/conftool/d", is_dir=True), MAPPER) == []
    assert v2_changes(v2("delete", "/conftool/d", is_dir=True), MAPPER) == [
        Change(b"/replica/conftool/d", None, None, below=True, compared=False)]


def test_ignored_keys_change_nothing():
    assert v2_changes(v2("set", "/conftool/local/x", "1"), MAPPER) == []
    event = WatchEvent("PUT", KeyValue(b"/conftool/local/y", b"1"))
    assert v3_changes([event], MAPPER) == []


def test_v3_events_compare_their_prev_kv_and_keep_any_bytes():
    events = [WatchEvent("PUT", KeyValue(b"/conftool/\xff", b"v", lease=7),
                         KeyValue(b"/conftool/\xff", b"u")),
              WatchEvent("DELETE", KeyValue(b"/conftool/gone"), KeyValue(b"/conftool/gone", b"g"))]
    assert v3_changes(events, MAPPER) == [
        Change(b"/replica/conftool/\xff", b"v", b"u", source_lease=7),
        Change(b"/replica/conftool/gone", None, b"g")]


def test_the_transaction_moves_the_checkpoint_with_the_changes():
    body = transaction([Change(b"/r/a", b"2", b"1"), Change(b"/r/new", b"n", None),
                        Change(b"/r/d", None, None, below=True, compared=False)],
                       b"/__replication/r", 41, 42, leases={b"/r/new": 5})
    assert body["compare"] == [
        {"key": b64(b"/__replication/r"), "result": "EQUAL", "target": "VALUE",
         "value": b64(b"41")},
        {"key": b64(b"/r/a"), "result": "EQUAL", "target": "VALUE", "value": b64(b"1")},
        {"key": b64(b"/r/new"), "result": "EQUAL", "target": "VERSION", "version": "0"}]
    assert body["success"] == [
        {"request_put": {"key": b64(b"/r/a"), "value": b64(b"2")}},
        {"request_put": {"key": b64(b"/r/new"), "value": b64(b"n"), "lease": "5"}},
        {"request_delete_range": {"key": b64(b"/r/d")}},
        {"request_delete_range": {"key": b64(b"/r/d/"), "range_end": b64(b"/r/d0")}},
        {"request_put": {"key": b64(b"/__replication/r"), "value": b64(b"42")}}]
    assert [next(iter(op.values()))["key"] for op in body["failure"]] == [
        b64(b"/__replication/r"), b64(b"/r/a"), b64(b"/r/new")]


def test_the_first_transaction_finds_no_checkpoint():
    body = transaction([], b"/__replication/r", None, 7)
    assert body["compare"] == [{"key": b64(b"/__replication/r"), "result": "EQUAL",
                                "target": "VERSION", "version": "0"}]


def test_a_v2_delete_of_the_root_spares_the_replication_keys():
    """``--strip --dst-prefix /`` and the source prefix deleted: everything but the
    checkpoint, which the same transaction writes (etcd refuses a txn whose delete
    range covers one of its puts)."""
    assert ranges_below(b"/") == [(b"\0", b"/__replication/"), (b"/__replication0", b"\0")]
    assert ranges_below(b"/r/d") == [(b"/r/d/", b"/r/d0")]
    mapper = KeyMapper("/app", "/", strip=True)
    [change] = v2_changes(v2("delete", "/app", is_dir=True), mapper)
    body = transaction([change], b"/__replication/", 3, 4)
    assert {"request_delete_range": {"key": b64(b"\0"), "range_end": b64(b"/__replication/")}} \
        in body["success"]


def test_replication_keys_on_a_v3_source_are_never_replicated():
    """v2 hides /__replication from recursive watches; v3 does not, so the mapping does."""
    everything = KeyMapper("/", "/replica")
    events = [WatchEvent("PUT", KeyValue(b"/__replication/replica", b"7")),
              WatchEvent("PUT", KeyValue(b"/__replication/replica.fresh-as-of", b"{}")),
              WatchEvent("PUT", KeyValue(b"/app", b"a"))]
    assert v3_changes(events, everything) == [Change(b"/replica/app", b"a", None)]
