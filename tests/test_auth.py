"""etcd v2 authentication: credentials out of argv, clear errors, no password anywhere."""

import json
import os
import subprocess
import sys
import tempfile
import urllib.request

import pytest

from tests.helpers import V2, wait_for

PASSWORD = "Pa55-w0rd-under-test"


def api(url, path, body, auth=("root", PASSWORD)):
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="PUT")
    request.add_header("Content-Type", "application/json")
    if auth:
        import base64
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", "Basic " + token)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def secure(etcd, users=()):
    """Root with PASSWORD, guest without any access, and extra users/roles."""
    api(etcd.url, "/v2/auth/users/root", {"user": "root", "password": PASSWORD}, auth=None)
    api(etcd.url, "/v2/auth/enable", {}, auth=None)
    api(etcd.url, "/v2/auth/roles/guest",
        {"role": "guest", "revoke": {"kv": {"read": ["/*"], "write": ["/*"]}}})
    for user, role, read, write in users:
        api(etcd.url, f"/v2/auth/roles/{role}",
            {"role": role, "permissions": {"kv": {"read": read, "write": write}}})
        api(etcd.url, f"/v2/auth/users/{user}",
            {"user": user, "password": PASSWORD, "roles": [role]})
    return V2(etcd.url, "root", PASSWORD)


@pytest.fixture
def secured(etcd_factory):
    src_etcd, dst_etcd = etcd_factory(name="asrc"), etcd_factory(name="adst")
    src = secure(src_etcd, [("reader", "reader", ["/conftool*"], [])])
    dst = secure(dst_etcd, [("limited", "limited", ["/*"], ["/__replication*"])])
    return src, dst


@pytest.fixture
def credentials_file():
    fd, path = tempfile.mkstemp(prefix="etcdmirror-creds-")
    os.close(fd)
    yield path
    os.unlink(path)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def test_credentials_from_file_and_environment_never_shown(secured, mirror,
                                                           credentials_file):
    src, dst = secured
    src.set("/conftool/a", "1")
    m = mirror(src.url, dst.url, "-d", "--reload", "--src-prefix", "/conftool",
               "--src-credentials-file", write(credentials_file, f"root:{PASSWORD}\n"),
               env={"ETCDMIRROR_DST_CREDENTIALS": f"root:{PASSWORD}"})
    src.set("/conftool/b", "2")
    wait_for(lambda: dst.get("/replica/conftool/b")[0] == 200)
    with open(f"/proc/{m.pid}/cmdline", "rb") as f:
        cmdline = f.read().decode(errors="replace")
    emitted = {"log": m.log(), "metrics": m.metrics(), "status": json.dumps(m.status()),
               "cmdline": cmdline}
    assert not [name for name, text in emitted.items() if PASSWORD in text]


def test_wrong_password_is_a_clear_error_without_retries(secured, mirror, credentials_file):
    src, dst = secured
    m = mirror(src.url, dst.url, "--reload", "--src-credentials-file",
               write(credentials_file, "root:wrong"),
               env={"ETCDMIRROR_DST_CREDENTIALS": f"root:{PASSWORD}"}, healthy=False)
    assert m.wait_exit(30) == 1
    log = m.log()
    assert "check the credentials" in log and "source" in log
    assert "retrying" not in log and "wrong" not in log


def test_a_role_that_cannot_write_the_destination_names_the_key(secured, mirror):
    src, dst = secured
    src.set("/conftool/a", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", "/conftool",
               env={"ETCDMIRROR_SRC_CREDENTIALS": f"reader:{PASSWORD}",
                    "ETCDMIRROR_DST_CREDENTIALS": f"limited:{PASSWORD}"}, healthy=False)
    assert m.wait_exit(30) == 1
    log = m.log()
    assert "'/replica/conftool" in log and "permission denied" in log, log


@pytest.mark.parametrize("content, why", [(None, "cannot read"), ("no colon", "user:password")])
def test_unusable_credentials_file_is_a_usage_error(content, why, credentials_file):
    path = credentials_file if content is not None else credentials_file + ".missing"
    if content is not None:
        write(path, content)
    result = subprocess.run([sys.executable, "-m", "etcdmirror", "--src-credentials-file",
                             path, "http://h:1", "http://h:2"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert "--src-credentials-file" in result.stderr and why in result.stderr


def test_credentials_in_url_and_file_is_a_usage_error(credentials_file):
    write(credentials_file, f"root:{PASSWORD}")
    result = subprocess.run([sys.executable, "-m", "etcdmirror", "--dst-credentials-file",
                             credentials_file, "http://h:1", "http://u:p@h:2"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "both in the URL" in result.stderr
    assert PASSWORD not in result.stderr


def test_credentials_in_the_url_as_0_0_12(secured, mirror):
    src, dst = secured
    src.set("/conftool/a", "1")
    with_password = lambda url: url.replace("http://", f"http://root:{PASSWORD}@")  # noqa
    m = mirror(with_password(src.url), with_password(dst.url), "--reload",
               "--src-prefix", "/conftool")
    wait_for(lambda: dst.get("/replica/conftool/a")[0] == 200)
    assert PASSWORD not in m.log() + m.metrics() + json.dumps(m.status())


def test_v3_auth_token_from_credentials_never_shown(etcd_factory, src, mirror,
                                                    credentials_file):
    """v3 -> v3 into a destination with v3 auth on: the credentials file's user and
    password become a token; the password shows nowhere; a wrong one exits 1."""
    from tests.v3sync import V3
    secured = etcd_factory(name="v3adst")
    admin = V3(secured.url)
    for path, body in [("/v3/auth/role/add", {"name": "root"}),
                       ("/v3/auth/user/add", {"name": "root", "password": PASSWORD}),
                       ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
                       ("/v3/auth/enable", {})]:
        admin.call(path, body)
    source = V3(src.url)
    source.put("/auth3/a", "1")
    args = ("--src-api", "v3", "--dst-api", "v3", "--src-prefix", "/auth3", "--reload")
    m = mirror(src.url, secured.url, *args,
               "--dst-credentials-file", write(credentials_file, f"root:{PASSWORD}\n"))
    m.wait_index(source.put("/auth3/b", "2"), timeout=20)
    reader = V3(secured.url).authenticate("root", PASSWORD)
    assert reader.tree("/replica/auth3") == {"/replica/auth3/a": "1", "/replica/auth3/b": "2"}
    with open(f"/proc/{m.pid}/cmdline", "rb") as f:
        cmdline = f.read().decode(errors="replace")
    emitted = {"log": m.log(), "metrics": m.metrics(), "status": json.dumps(m.status()),
               "cmdline": cmdline}
    assert not [name for name, text in emitted.items() if PASSWORD in text]
    wrong = mirror(src.url, secured.url, *args, healthy=False,
                   env={"ETCDMIRROR_DST_CREDENTIALS": "root:not-the-password"})
    assert wrong.wait_exit(30) == 1
    assert "authentication failed" in wrong.log() and "not-the-password" not in wrong.log()
