"""TLS to real etcd servers with certificates made at test time (trustme)."""

import os
import tempfile

import pytest

from tests.helpers import V2, wait_for

trustme = pytest.importorskip("trustme")

PREFIX = "/conftool"


@pytest.fixture(scope="module")
def pki():
    ca, other_ca = trustme.CA(), trustme.CA()
    directory = tempfile.mkdtemp(prefix="etcdmirror-pki-")
    paths = {}

    def write(name, blob):
        paths[name] = os.path.join(directory, name)
        blob.write_to_path(paths[name])

    server = ca.issue_cert("127.0.0.1", "localhost")
    write("ca.pem", ca.cert_pem)
    write("other-ca.pem", other_ca.cert_pem)
    write("server.pem", server.cert_chain_pems[0])
    write("server.key", server.private_key_pem)
    wrong_host = ca.issue_cert("etcd.example.org")
    write("wrong-host.pem", wrong_host.cert_chain_pems[0])
    write("wrong-host.key", wrong_host.private_key_pem)
    client = ca.issue_cert("mirror-client")
    write("client.pem", client.cert_chain_pems[0])
    write("client.key", client.private_key_pem)
    yield paths
    for path in paths.values():
        os.unlink(path)
    os.rmdir(directory)


def test_https_source_verified_against_the_given_ca(pki, etcd_factory, dst, mirror):
    tls_src = etcd_factory(name="tls", tls=(pki["server.pem"], pki["server.key"]))
    assert tls_src.url.startswith("https://")
    m = mirror(tls_src.url, dst.url, "--reload", "--src-prefix", PREFIX,
               "--src-ca-file", pki["ca.pem"])
    import ssl
    context = ssl.create_default_context(cafile=pki["ca.pem"])
    with V2(tls_src.url, context=context) as client:
        assert client.set("/conftool/a", "tls")[0] == 201
    wait_for(lambda: dst.get("/replica/conftool/a")[0] == 200)
    assert m.healthy()


@pytest.mark.parametrize("server, ca, why", [
    ("server", "other-ca.pem", "unknown CA"),
    ("wrong-host", "ca.pem", "host name not in the certificate"),
])
def test_untrusted_server_is_a_clear_error_not_a_hang(pki, etcd_factory, dst, mirror,
                                                      server, ca, why):
    tls_src = etcd_factory(name="tls", tls=(pki[server + ".pem"], pki[server + ".key"]))
    m = mirror(tls_src.url, dst.url, "--reload", "--src-ca-file", pki[ca], healthy=False)
    assert m.wait_exit(30) == 1, why
    assert "TLS failed" in m.log(), m.log()


def test_mutual_tls(pki, etcd_factory, dst, mirror):
    tls_src = etcd_factory(name="mtls", tls=(pki["server.pem"], pki["server.key"]),
                           client_ca=pki["ca.pem"],
                           probe_cert=(pki["client.pem"], pki["client.key"]))
    m = mirror(tls_src.url, dst.url, "--reload", "--src-ca-file", pki["ca.pem"],
               "--src-cert-file", pki["client.pem"], "--src-key-file", pki["client.key"])
    assert m.healthy()
    without = mirror(tls_src.url, dst.url, "--reload", "--src-ca-file", pki["ca.pem"],
                     healthy=False)
    assert without.wait_exit(30) == 1


def test_bad_tls_files_are_usage_errors(pki):
    import subprocess
    import sys
    for args, flag in ((["--src-ca-file", "/nonexistent.pem"], "--src-ca-file"),
                       (["--src-key-file", pki["client.key"]], "--src-key-file")):
        result = subprocess.run([sys.executable, "-m", "etcdmirror", *args,
                                 "https://127.0.0.1:1", "http://127.0.0.1:2"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and flag in result.stderr, result.stderr
    result = subprocess.run([sys.executable, "-m", "etcdmirror", "--src-ca-file",
                             pki["ca.pem"], "http://127.0.0.1:1", "http://127.0.0.1:2"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "not https" in result.stderr


def test_mutual_tls_on_a_v3_source(pki, etcd_factory, dst, mirror):
    """The v3 client goes through the same TLS policy: CA, client certificate."""
    import ssl

    from tests.v3sync import V3
    tls_src = etcd_factory(name="mtls3", tls=(pki["server.pem"], pki["server.key"]),
                           client_ca=pki["ca.pem"],
                           probe_cert=(pki["client.pem"], pki["client.key"]))
    context = ssl.create_default_context(cafile=pki["ca.pem"])
    context.load_cert_chain(pki["client.pem"], pki["client.key"])
    source = V3(tls_src.url, context=context)
    source.put("/tls3/a", "over TLS")
    m = mirror(tls_src.url, dst.url, "--reload", "--src-api", "v3", "--dst-api", "v3",
               "--src-prefix", "/tls3", "--src-ca-file", pki["ca.pem"],
               "--src-cert-file", pki["client.pem"], "--src-key-file", pki["client.key"])
    m.wait_index(source.put("/tls3/b", "live"), timeout=20)
    assert V3(dst.url).tree("/replica/tls3") == {"/replica/tls3/a": "over TLS",
                                                   "/replica/tls3/b": "live"}
    without = mirror(tls_src.url, dst.url, "--reload", "--src-api", "v3", "--dst-api", "v3",
                     "--src-prefix", "/tls3", "--src-ca-file", pki["ca.pem"], healthy=False)
    assert without.wait_exit(30) == 1
