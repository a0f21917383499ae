"""Parsing SRC/DST: URLs, endpoint lists, credentials kept out of every display."""

import pytest

from etcdmirror.endpoints import EndpointError, parse_cluster


def test_single_url():
    c = parse_cluster("http://127.0.0.1:2379")
    assert c.display == "http://127.0.0.1:2379" and c.auth is None


def test_list_of_endpoints_and_default_port():
    c = parse_cluster("https://a.example:4001, https://b.example")
    assert [e.url for e in c.endpoints] == ["https://a.example:4001", "https://b.example:2379"]


def test_credentials_are_separated_and_never_displayed():
    c = parse_cluster("https://root:s3cr%40t@etcd.example:2379,https://root:s3cr%40t@e2:2379")
    assert c.auth == ("root", "s3cr@t")
    assert "s3cr" not in c.display and "s3cr" not in repr(c) and "s3cr" not in str(c)


@pytest.mark.parametrize("bad", [
    "", "127.0.0.1:2379", "ftp://h:1", "http://", "http://h:99999", "http://h:1/path",
    "http://h:1,", "http://user@h:1",
])
def test_bad_urls(bad):
    with pytest.raises(EndpointError):
        parse_cluster(bad)


def test_errors_do_not_leak_the_password():
    with pytest.raises(EndpointError) as info:
        parse_cluster("http://root:hunter2@h:1/some/path")
    assert "hunter2" not in str(info.value)


def test_ipv6():
    assert parse_cluster("http://[::1]:2379").endpoints[0].url == "http://[::1]:2379"
