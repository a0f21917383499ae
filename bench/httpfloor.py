"""How fast can one Twisted process write to etcd, one PUT after the other?

    python bench/httpfloor.py PORT COUNT

The mirror's destination writes must stay in source order, so each waits for
the one before.  This measures that ceiling on the HTTP stacks the mirror is
built on, against the same destination as bench/run.py's raw limit (which
uses the standard library's http.client):

* ``agent``: Twisted's ``Agent`` with a persistent pool, nothing else;
* ``client``: etcd-mirror's own :class:`~etcdmirror.client.EtcdClient`
  (its lean write client, answer validation), exactly as the mirror writes.

Prints one JSON object: PUT/s and CPU ms per PUT for each.
"""

import json
import os
import resource
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from twisted.internet import defer, task  # noqa: E402
from twisted.web.client import Agent, HTTPConnectionPool, readBody  # noqa: E402
from twisted.web.http_headers import Headers  # noqa: E402

from etcdmirror.bodies import BytesBody  # noqa: E402
from etcdmirror.client import EtcdClient  # noqa: E402
from etcdmirror.endpoints import parse_cluster  # noqa: E402


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@defer.inlineCallbacks
def measure(name, put, count, results):
    yield put(0)  # connect first
    started, cpu_before = time.perf_counter(), cpu()
    for i in range(count):
        yield put(i)
    elapsed = time.perf_counter() - started
    results[name] = {"rate": count / elapsed, "cpu_ms": (cpu() - cpu_before) / count * 1000}


@defer.inlineCallbacks
def main(reactor, port: str, count: str):
    n = int(count)
    results = {}
    pool = HTTPConnectionPool(reactor)
    agent = Agent(reactor, pool=pool)
    form = Headers({b"Content-Type": [b"application/x-www-form-urlencoded"]})

    @defer.inlineCallbacks
    def agent_put(i):
        url = b"http://127.0.0.1:%s/v2/keys/bench-floor/a%d" % (port.encode(), i % 100)
        response = yield agent.request(b"PUT", url, form, BytesBody(b"value=floor-%d" % i))
        yield readBody(response)
        if response.code >= 300:
            raise RuntimeError("PUT failed: HTTP %d" % response.code)

    client = EtcdClient(parse_cluster("http://127.0.0.1:%s" % port), reactor)

    def client_put(i):
        return client.put("/bench-floor/c%d" % (i % 100), "floor-%d" % i)

    yield measure("agent", agent_put, n, results)
    yield measure("client", client_put, n, results)
    yield pool.closeCachedConnections()
    yield client.close()
    print(json.dumps(results))


if __name__ == "__main__":
    task.react(main, sys.argv[1:3])
