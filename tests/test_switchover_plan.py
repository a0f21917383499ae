"""The reverse of a mirror's mapping, and the next steps printed (pure)."""

import itertools
import re

import pytest

from etcdmirror.indexstore import IndexStore
from etcdmirror.keys import KeyMapper
from etcdmirror.switchplan import (
    Refused, Settings, mirror_args, next_steps, reverse_mapper, unit_opts)

PREFIXES = ["/", "/a", "/a/b", "/r", "/replica/a"]


@pytest.mark.parametrize("strip,src_prefix,dst_prefix",
                         list(itertools.product([False, True], PREFIXES, PREFIXES)))
def test_the_reverse_maps_every_key_back(strip, src_prefix, dst_prefix):
    forward = KeyMapper(src_prefix, dst_prefix, strip=strip)
    reverse = reverse_mapper(forward)
    assert reverse.strip and reverse.src_prefix == forward.dst_root
    assert reverse.dst_root == forward.src_prefix
    base = "" if src_prefix == "/" else src_prefix
    for key in [src_prefix, base + "/k", base + "/d/k", base + "/a/b/c"]:
        image = forward.to_dst(key)
        assert reverse.to_dst(image) == key, (key, image)
        assert reverse.to_src(key) == image
    # Its index key on A is the one a mirror with --dst-prefix P reads.
    assert reverse.index_key == KeyMapper("/", src_prefix).index_key
    assert IndexStore(None, reverse).source_id_key == reverse.index_key + ".source-cluster-id"


def test_the_ignore_regex_is_kept_when_keys_keep_their_names():
    regex = re.compile("/conftool/locks(/.*)?")
    forward = KeyMapper("/conftool", "/conftool", strip=True, ignore=regex)
    assert reverse_mapper(forward).ignore is regex


def test_the_ignore_regex_is_refused_when_keys_are_renamed():
    forward = KeyMapper("/conftool", "/replica", ignore=re.compile("/conftool/locks(/.*)?"))
    with pytest.raises(Refused, match="cannot be rewritten safely"):
        reverse_mapper(forward)


def test_the_reverse_command_swaps_the_sides_files():
    forward = KeyMapper("/conftool", "/replica")
    sides = {"src_ca_file": "/etc/a-ca.pem", "dst_ca_file": "/etc/b-ca.pem",
             "dst_credentials_file": "/etc/b.cred", "src_cert_file": None}
    args = mirror_args(reverse_mapper(forward), sides)
    assert args == ["--strip", "--src-prefix", "/replica/conftool", "--dst-prefix",
                    "/conftool", "--src-credentials-file", "/etc/b.cred",
                    "--src-ca-file", "/etc/b-ca.pem", "--dst-ca-file", "/etc/a-ca.pem"]


def test_the_next_steps_name_the_instance_and_the_full_command():
    forward = KeyMapper("/conftool", "/conftool", strip=True)
    lines = "\n".join(next_steps(forward, reverse_mapper(forward), "http://a:2379",
                                 "http://b:2379", {}, Settings(instance="conftool"), False))
    assert "systemctl stop etcd-mirror@conftool" in lines
    assert ("etcd-mirror --strip --src-prefix /conftool --dst-prefix /conftool "
            "http://b:2379 http://a:2379") in lines
    assert "--reload" in lines and "WITHOUT --reload" in lines
    assert "make B writable" in lines


def test_the_unit_options_are_quoted_as_readme_debian_says():
    args = ["--strip", "--src-ignore-keys-regex", "/conftool/(a b|c\\.d)$"]
    assert unit_opts(args) == ("'--strip --src-ignore-keys-regex "
                               "\"/conftool/(a b|c\\\\.d)$\"'")
    assert unit_opts(["--src-ignore-keys-regex", "it's"]) is None
