"""The command line: 0.0.12's flags, and usage errors that exit 2 before any I/O."""

import socket
import subprocess
import sys

import pytest

from etcdmirror import __version__


def run(*args, timeout=20):
    return subprocess.run([sys.executable, "-m", "etcdmirror", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def listener():
    """A socket that would see it if the mirror tried to connect."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(5)
    sock.setblocking(False)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", sock
    sock.close()


def assert_no_connection(sock):
    with pytest.raises(BlockingIOError):
        sock.accept()


@pytest.mark.parametrize("args, flag", [
    (["--src-prefix", "conftool"], "--src-prefix"),
    (["--dst-prefix", "relative/path"], "--dst-prefix"),
    (["--src-ignore-keys-regex", "([unclosed"], "--src-ignore-keys-regex"),
    (["--port", "notaport"], "--port"),
    (["--port", "70000"], "--port"),
    (["--watch-idle-timeout", "0"], "--watch-idle-timeout"),
    (["--no-such-flag"], "--no-such-flag"),
    (["--max-resync-deletes", "-1"], "--max-resync-deletes"),
    (["--max-resync-deletes", "abc"], "--max-resync-deletes"),
    (["--max-resync-deletes", "150%"], "--max-resync-deletes"),
    (["--max-resync-deletes", "2.5"], "--max-resync-deletes"),
    (["--max-resync-deletes", ""], "--max-resync-deletes"),
    (["--write-pipeline", "0"], "--write-pipeline"),
    (["--write-pipeline", "many"], "--write-pipeline"),
])
def test_usage_errors_name_the_flag_and_exit_2(listener, args, flag):
    url, sock = listener
    result = run(*args, url, url)
    assert result.returncode == 2, result.stderr
    assert flag in result.stderr
    assert_no_connection(sock)


@pytest.mark.parametrize("bad", ["localhost:2379", "ftp://h:1", "http://h:1/path",
                                 "http://h:notaport", "http://h:1,,http://h:2"])
def test_unparsable_urls_are_usage_errors(listener, bad):
    url, sock = listener
    result = run(bad, url)
    assert result.returncode == 2
    assert "SRC" in result.stderr
    result = run(url, bad)
    assert result.returncode == 2 and "DST" in result.stderr
    assert_no_connection(sock)


def test_password_is_not_echoed_in_usage_errors():
    result = run("http://root:hunter2@h:1/path", "http://h:2")
    assert result.returncode == 2 and "hunter2" not in result.stderr


def test_version_and_help():
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == __version__
    result = run("--help")
    assert result.returncode == 0
    for flag in ("--debug", "--reload", "--strip", "--src-prefix", "--dst-prefix",
                 "--src-ignore-keys-regex", "--port", "-d", "SRC", "DST", "/replica"):
        assert flag in result.stdout


def test_missing_arguments():
    result = run("http://h:1")
    assert result.returncode == 2 and "DST" in result.stderr


def test_check_config_validates_without_connecting(listener):
    url, sock = listener
    result = run("--check-config", "--strip", "--src-prefix", "/conftool", "--dst-prefix",
                 "/conftool", url, url)
    assert result.returncode == 0, result.stderr
    assert "configuration ok" in result.stdout and "/__replication/conftool" in result.stdout
    result = run("--check-config", "--src-prefix", "relative", url, url)
    assert result.returncode == 2 and "--src-prefix" in result.stderr
    assert_no_connection(sock)


@pytest.mark.parametrize("value", ["0", "250", "10%", "2.5%", "100%"])
def test_max_resync_deletes_takes_a_count_or_a_percentage(listener, value):
    url, sock = listener
    result = run("--check-config", "--max-resync-deletes", value, url, url)
    assert result.returncode == 0, result.stderr
    assert_no_connection(sock)


def test_max_resync_deletes_is_explained_in_help():
    result = run("--help")
    assert "--max-resync-deletes" in result.stdout and "10%" in result.stdout


def test_write_pipeline_defaults_to_the_pipeline_s_depth():
    from etcdmirror.pipeline import PIPELINE_DEPTH
    result = run("--help")
    assert f"destinations: always 1. [default: {PIPELINE_DEPTH}" in " ".join(result.stdout.split())
