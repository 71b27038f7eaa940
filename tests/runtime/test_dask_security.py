"""The DaskRunner's network: a LocalCluster it starts is on loopback only and talks TLS with
credentials of its own (no other process can connect, unless ``security=False``), and it
talks TLS to a scheduler that asks for it (``security=distributed.Security``)."""

from __future__ import annotations

import logging
from urllib.parse import urlparse

import pyarrow as pa
import pytest

import sabot_lab as sl
from sabot_lab.runtime.dask import DaskRunner
from tests.oracle import assert_same_rows

distributed = pytest.importorskip("distributed")
pytest.importorskip("cryptography")  # Security.temporary() makes its certificates with it


def _host(address: str) -> str:
    return urlparse(address).hostname


def test_a_local_cluster_listens_on_loopback_only(runner):
    info = runner.client.scheduler_info()
    assert _host(runner.client.scheduler.address) == "127.0.0.1"
    assert {_host(w) for w in info["workers"]} == {"127.0.0.1"}
    assert _host(runner.dashboard_link) == "127.0.0.1"


def test_tls_to_a_scheduler_that_requires_it():
    security = distributed.Security.temporary()  # self-signed, in memory
    table = pa.table({"k": list(range(1_000)), "v": [i % 7 for i in range(1_000)]})
    job = sl.Stream.from_table(table, batch_size=100).filter(sl.col("v") > 2)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1",
                                  protocol="tls", security=security, dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        with DaskRunner(address, security=security, timeout=30) as runner:
            assert_same_rows(job.run(runner).table, job.run().table)
        with pytest.raises(ValueError, match="talks TLS: pass its certificates"):
            DaskRunner(address, timeout=5)


def _refused(address: str, **client_kwargs: object) -> bool:
    """Whether a client fails to connect to ``address`` within a few seconds."""
    try:
        client = distributed.Client(address, timeout=3, **client_kwargs)
    except (OSError, TimeoutError):
        return True
    client.close()
    return False


def test_a_cluster_the_runner_starts_talks_tls_and_refuses_strangers():
    table = pa.table({"k": list(range(1_000))})
    job = sl.Stream.from_table(table, batch_size=100).filter(sl.col("k") > 500)
    with DaskRunner(n_workers=1) as runner:
        address = runner.client.scheduler.address
        assert address.startswith("tls://")
        assert all(w.startswith("tls://") for w in runner.client.scheduler_info()["workers"])
        assert_same_rows(job.run(runner).table, job.run().table)
        # Another local process: plain TCP without credentials, or TLS with credentials
        # of its own, cannot connect (and so cannot run code on the workers).
        assert _refused(address.replace("tls://", "tcp://", 1))
        assert _refused(address, security=distributed.Security.temporary())


def test_security_false_starts_a_plain_cluster():
    table = pa.table({"k": list(range(1_000))})
    job = sl.Stream.from_table(table, batch_size=100).filter(sl.col("k") > 500)
    with DaskRunner(n_workers=1, security=False) as runner:
        assert runner.client.scheduler.address.startswith("tcp://")
        assert_same_rows(job.run(runner).table, job.run().table)


def test_without_cryptography_the_error_says_how_to_opt_out(monkeypatch):
    def missing() -> None:
        raise ImportError("No module named 'cryptography'")

    monkeypatch.setattr(distributed.Security, "temporary", staticmethod(missing))
    with pytest.raises(ImportError, match=r"needs the `cryptography` package.*security=False"):
        DaskRunner(n_workers=1)
