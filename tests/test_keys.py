"""Key mapping, prefixes and the index key: 0.0.12's rules, as pure functions."""

import re

import pytest

from etcdmirror.keys import KeyMapper, PrefixError, index_key, is_under, normalize_prefix


@pytest.mark.parametrize("dst, expected", [
    ("/replica", "/__replication/replica"),
    ("/replica/", "/__replication/replica"),
    ("/conftool", "/__replication/conftool"),
    ("/a/b", "/__replication/a/b"),
    ("/", "/__replication/__ROOT__"),
])
def test_index_key_as_0_0_12(dst, expected):
    assert index_key(dst) == expected


def test_mapping_without_strip_keeps_whole_source_key():
    m = KeyMapper("/conftool", "/replica")
    assert m.to_dst("/conftool/a/b") == "/replica/conftool/a/b"
    assert m.dst_root == "/replica/conftool"
    assert m.to_src("/replica/conftool/a/b") == "/conftool/a/b"


def test_mapping_with_strip():
    m = KeyMapper("/conftool", "/conftool", strip=True)
    assert m.to_dst("/conftool/a") == "/conftool/a"
    m = KeyMapper("/conftool/", "/mirror/", strip=True)
    assert m.to_dst("/conftool/a/b") == "/mirror/a/b"
    assert m.to_dst("/conftool") == "/mirror"
    assert m.to_src("/mirror/a/b") == "/conftool/a/b"


def test_mapping_roots():
    m = KeyMapper("/", "/replica")
    assert m.to_dst("/a") == "/replica/a"
    assert m.to_dst("/") == "/replica"
    assert m.to_src("/replica/a") == "/a"
    m = KeyMapper("/conftool", "/", strip=True)
    assert m.to_dst("/conftool/a") == "/a"
    assert m.dst_root == "/"
    assert m.to_src("/a") == "/conftool/a"
    m = KeyMapper("/", "/")
    assert m.to_dst("/a/b") == "/a/b" and m.to_src("/a/b") == "/a/b"


def test_prefix_boundaries_are_segments():
    assert is_under("/conftool/a", "/conftool")
    assert is_under("/conftool", "/conftool")
    assert not is_under("/conftool2/a", "/conftool")
    with pytest.raises(ValueError):
        KeyMapper("/conftool", "/replica").to_dst("/conftool2/a")


@pytest.mark.parametrize("bad", ["conftool", "", "a/b", "/a//b"])
def test_bad_prefixes(bad):
    with pytest.raises(PrefixError):
        normalize_prefix(bad)


def test_ignore_is_a_full_match():
    m = KeyMapper("/", "/r", ignore=re.compile("/locks/.*"))
    assert m.ignored("/locks/a")
    assert not m.ignored("/x/locks/a")
    assert not m.ignored("/locks")
    assert not KeyMapper("/", "/r").ignored("/anything")


def test_overlap_detection():
    m = KeyMapper("/a", "/replica")
    assert m.overlaps("/replica")
    assert m.overlaps("/")
    assert not m.overlaps("/a")
