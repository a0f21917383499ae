"""``python -m etcdmirror``: the same as the ``etcd-mirror`` command."""

from etcdmirror.cli import main

if __name__ == "__main__":
    main(prog_name="etcd-mirror")
