"""The event log (0.0.12's "Replicating key ... at index ..."), journald priorities, --log-level."""

import io
import logging
import os
import re
import tempfile

from etcdmirror.localetcd import free_port
from etcdmirror.logs import JournalFormatter, priority, writes_to_journal
from tests.helpers import wait_for

PREFIX = "/conftool"
IMAGE = "/replica/conftool"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def record(level, message, exc_info=None):
    return logging.LogRecord("etcdmirror.controller", level, __file__, 1, message, (),
                             exc_info)


def test_journal_lines_carry_the_priority_on_every_line_and_no_timestamp():
    formatter = JournalFormatter()
    assert formatter.format(record(logging.ERROR, "boom")) == "<3>etcdmirror.controller: boom"
    assert formatter.format(record(logging.CRITICAL, "a\nb")).split("\n") == [
        "<2>etcdmirror.controller: a", "<2>b"]
    assert [priority(level) for level in (logging.DEBUG, logging.INFO, logging.WARNING,
                                          logging.ERROR, logging.CRITICAL)] == [7, 6, 4, 3, 2]


def test_the_journal_is_recognised_by_its_device_and_inode_only():
    with tempfile.TemporaryFile("w") as f:
        st = os.fstat(f.fileno())
        assert writes_to_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not writes_to_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not writes_to_journal(f, {})
        assert not writes_to_journal(f, {"JOURNAL_STREAM": "junk"})
    assert not writes_to_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def event_lines(log):
    return re.findall(r"Replicating key (\S+) at index (\d+) \((\w+), ([^)]*)\)", log)


def test_one_info_line_per_event_with_action_and_outcome(src, dst, mirror):
    src.set(PREFIX + "/a", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX,
               "--src-ignore-keys-regex", PREFIX + "/skip")
    index = src.set(PREFIX + "/b", "2")[1]["node"]["modifiedIndex"]
    src.set(PREFIX + "/skip", "x")
    src.delete(PREFIX + "/a")
    wait_for(lambda: len(event_lines(m.log())) == 3, message="three event lines")
    assert event_lines(m.log()) == [
        (PREFIX + "/b", str(index), "set", "applied"),
        (PREFIX + "/skip", str(index + 1), "set", "ignored by regex"),
        (PREFIX + "/a", str(index + 2), "delete", "applied")]
    assert re.search(r" INFO etcdmirror\.controller: Replicating key ", m.log())
    # The reload's trail: one line per key written.
    assert f"resync: wrote {IMAGE}/a" in m.log()


def test_no_event_log_and_log_level(src, dst, mirror):
    src.set(PREFIX + "/keep", "k")
    dst.set(IMAGE + "/stale", "x")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX, "--no-event-log")
    src.set(PREFIX + "/a", "1")
    wait_for(lambda: dst.get(IMAGE + "/a")[0] == 200)
    m.stop()
    assert "Replicating key" not in m.log()
    # Deletions by a resync are always logged, key by key.
    assert f"resync: deleted {IMAGE}/stale" in m.log()
    # Nothing at INFO, so not the line that names the HTTP port either: give one.
    quiet = mirror(src.url, dst.url, "--src-prefix", PREFIX, "--log-level", "warning",
                   port=free_port())
    src.set(PREFIX + "/b", "2")
    wait_for(lambda: dst.get(IMAGE + "/b")[0] == 200)
    quiet.stop()
    assert " INFO " not in quiet.log() and "Replicating key" not in quiet.log()


def test_under_systemd_lines_have_priorities_and_no_timestamps(src, dst, mirror):
    """journalctl -p err shows why the mirror stopped."""
    src.set(PREFIX + "/a", "1")
    m = mirror(src.url, dst.url, "--src-prefix", PREFIX, start=False)
    st = os.stat(m.log_path)
    m.env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    m.start(healthy=False)
    assert m.wait_exit() == 1          # no replication index: an operator is needed
    lines = m.log().splitlines()
    assert lines and all(re.match(r"<[2-7]>", line) for line in lines), lines
    assert not any(TIMESTAMP.match(line[3:]) for line in lines)
    assert any(line.startswith("<6>etcdmirror: etcd-mirror ") for line in lines)
    critical = [line for line in lines if line.startswith("<2>")]
    assert critical and "could not be found" in critical[-1] and "--reload" in critical[-1]
