"""etcd-mirror: replicate an etcd v2 prefix into another etcd cluster."""

import re
from pathlib import Path

from setuptools import find_packages, setup

version = re.search(
    r'__version__ = "([^"]+)"', Path(__file__).with_name("etcdmirror").joinpath(
        "__init__.py").read_text()).group(1)

setup(
    name="etcd-mirror",
    version=version,
    description="Keep a live, correct copy of an etcd v2 prefix in another cluster",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(exclude=["tests", "tests.*"]),
    python_requires=">=3.9",
    # Lower bounds are Debian bookworm's packages: the daemon must run on them.
    install_requires=[
        "twisted[tls]>=22.4",
        "treq>=22.2",
        "python-etcd>=0.4.5",
        "prometheus-client>=0.16",
        "click>=8.1",
    ],
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3", "hypothesis>=6",
                             "trustme>=0.9"]},
    entry_points={
        "console_scripts": [
            "etcd-mirror = etcdmirror.cli:main",
            "etcd-mirror-demo = etcdmirror.demo:main",
            "etcd-mirror-verify = etcdmirror.cli:verify_main",
            "etcd-mirror-freshness = etcdmirror.cli:freshness_main",
            "etcd-mirror-wait = etcdmirror.cli:wait_main",
            "etcd-mirror-switchover = etcdmirror.cli:switchover_main",
        ]
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Distributed Computing",
    ],
)
