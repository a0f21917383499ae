"""/metrics keeps every family etcd-mirror 0.0.12 served, and labelled counters start at 0."""

import re

from tests.helpers import wait_for

PREFIX = "/conftool"

#: Every metric family on 0.0.12's /metrics, as its text exposition names them
#: (``# TYPE`` lines): its four metrics and what prometheus_client's default
#: registry adds (process and platform collectors, the garbage collector).
#: Dashboards and alerts written for 0.0.12 may use any of them.
METRICS_0_0_12 = {
    "etcdmirror_replicated_events_total": "counter",
    "etcdmirror_write_latency": "histogram",
    "etcdmirror_lag": "gauge",
    "etcdmirror_load_time": "summary",
    "process_virtual_memory_bytes": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_start_time_seconds": "gauge",
    "process_cpu_seconds_total": "counter",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "python_info": "gauge",
    "python_gc_objects_collected_total": "counter",
    "python_gc_objects_uncollectable_total": "counter",
    "python_gc_collections_total": "counter",
}


def families(text):
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def zero(text, name, labels=""):
    """The sample is there, with the value 0 (``metric()`` says 0 for absent ones)."""
    wanted = name + ("{" + labels + "}" if labels else "")
    return f"\n{wanted} 0.0\n" in "\n" + text + "\n"


def test_every_family_of_0_0_12_is_served_and_labels_start_at_zero(src, dst, mirror):
    src.set(PREFIX + "/a", "1")
    m = mirror(src.url, dst.url, "--reload", "--src-prefix", PREFIX)
    served = families(m.metrics())
    missing = {name: kind for name, kind in METRICS_0_0_12.items() if served.get(name) != kind}
    assert not missing, f"0.0.12's families missing or of another type: {missing}"
    wait_for(lambda: m.metric("process_resident_memory_bytes") > 0)
    assert m.metric("process_open_fds") > 0
    # 0 series from the start, for rate() and alerts.
    text = m.metrics()
    for reason in ("index_cleared", "divergence", "interrupted", "ttl_expired"):
        assert zero(text, "etcdmirror_resyncs_total", f'reason="{reason}"'), reason
    assert m.metric("etcdmirror_resyncs_total", 'reason="reload"') == 1
    for side in ("source", "destination"):
        assert zero(text, "etcdmirror_retries_total", f'side="{side}"'), side
    assert zero(text, "etcdmirror_errors_total", 'kind="EtcdUnavailable"')
    assert zero(text, "etcdmirror_events_total", 'action="delete",outcome="applied"')
    assert zero(text, "etcdmirror_watch_stream_fallbacks_total")
    assert zero(text, "etcdmirror_last_error_timestamp_seconds")
    # The heartbeat's age under its new name, and the old one until 1.0.
    assert "etcdmirror_heartbeat_age_seconds" in served and "etcdmirror_lag_seconds" in served
