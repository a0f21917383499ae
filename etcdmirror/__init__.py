"""etcd-mirror: keep a live, correct copy of an etcd v2 prefix in another cluster."""

__version__ = "0.1.0"
