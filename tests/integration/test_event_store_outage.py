"""BufferedEventStore: exposures survive a database outage (a PostgreSQL server stopped and restarted
mid-run, a SQLite file locked by another writer) without raising or blocking, within a bounded buffer."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from appsim.backends.event_store import BufferedEventStore, SQLAlchemyEventStore, make_event_store
from appsim.errors import UnavailableError
from appsim.services.ab_events import Exposure, Outcome

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
CONNECT_TIMEOUT_S = 2.0


def exposure(request_id: str, **kw: object) -> Exposure:
    fields: dict[str, object] = {
        "experiment_id": "exp-1",
        "unit_id": f"user-{request_id}",
        "variant": "control",
        "model_version": "v1",
        "endpoint": "/v1/similar",
        "latency_ms": 10.0,
        "error": None,
        "forced": False,
        "ts": T0,
    }
    fields.update(kw)
    return Exposure(request_id=request_id, **fields)  # type: ignore[arg-type]


def click(event_id: str, request_id: str) -> Outcome:
    return Outcome(event_id=event_id, request_id=request_id, kind="click", value=1.0, ts=T0)


def stored_ids(store: SQLAlchemyEventStore) -> list[str]:
    return sorted(store.exposures("exp-1")["request_id"])


@pytest.fixture
def outage_db(private_postgresql_server: Any) -> Iterator[tuple[Any, str]]:
    """(server, url) of a fresh database on a server this module may stop; restarted after each test."""
    server = private_postgresql_server
    name = server.create_database()
    yield server, server.url(name)
    if not server.running():
        server.start()
    server.drop_database(name)


@pytest.mark.postgres
def test_exposures_are_buffered_while_postgres_is_down_and_flushed_after(
    outage_db: tuple[Any, str],
) -> None:
    server, url = outage_db
    inner = SQLAlchemyEventStore(url, connect_timeout_s=CONNECT_TIMEOUT_S, pool_size=2)
    buf = BufferedEventStore(inner, max_buffer=20, flush_interval_s=None, retry_after_s=0.1)
    try:
        for i in range(5):
            buf.record_exposure(exposure(f"before-{i}"))
        assert buf.stats() == {"buffered": 0, "flushed": 0, "lost": 0, "rejected": 0, "pending": 0}

        server.stop()
        slowest = 0.0
        started = time.monotonic()
        for i in range(25):
            t = time.monotonic()
            buf.record_exposure(exposure(f"during-{i}"))  # never raises
            slowest = max(slowest, time.monotonic() - t)
        assert slowest < CONNECT_TIMEOUT_S + 1.5
        assert time.monotonic() - started < 15
        assert buf.stats() == {"buffered": 20, "flushed": 0, "lost": 5, "rejected": 0, "pending": 20}
        assert not buf.health()
        with pytest.raises(UnavailableError):  # its exposure is buffered: 503, not a false 404
            buf.record_outcome(click("c0", "during-0"))
        with pytest.raises(UnavailableError):
            inner.exposures("exp-1")
        assert buf.flush() == 0  # still down: nothing written, nothing raised
        assert buf.pending == 20

        server.start()
        assert buf.flush() == 20
        assert buf.stats() == {"buffered": 20, "flushed": 20, "lost": 5, "rejected": 0, "pending": 0}
        assert buf.health()
        expected = sorted([f"before-{i}" for i in range(5)] + [f"during-{i}" for i in range(20)])
        assert stored_ids(inner) == expected  # the 5 overflowed ones are lost, counted
        assert buf.record_outcome(click("c0", "during-0")) is True
        buf.record_exposure(exposure("after"))  # written through again
        assert buf.pending == 0 and "after" in stored_ids(inner)
    finally:
        buf.close()
    assert buf.lost == 5


@pytest.mark.postgres
def test_background_thread_flushes_when_postgres_returns(outage_db: tuple[Any, str]) -> None:
    server, url = outage_db
    inner = SQLAlchemyEventStore(url, connect_timeout_s=CONNECT_TIMEOUT_S, pool_size=2)
    buf = BufferedEventStore(inner, max_buffer=100, flush_interval_s=0.2, retry_after_s=0.2)
    try:
        buf.record_exposure(exposure("r0"))
        server.stop()
        buf.record_exposures([exposure(f"r{i}") for i in range(1, 4)])
        buf.record_exposure(exposure("r4"))
        assert buf.pending == 4 and buf.lost == 0
        time.sleep(0.5)  # the flush thread retries against the stopped server without raising
        assert buf.pending == 4

        server.start()
        deadline = time.monotonic() + 20
        while buf.pending and time.monotonic() < deadline:
            time.sleep(0.1)
        assert buf.pending == 0 and buf.flushed == 4
        assert stored_ids(inner) == [f"r{i}" for i in range(5)]
    finally:
        buf.close()
    assert buf.lost == 0


@pytest.mark.postgres
def test_close_during_outage_counts_the_unflushed_as_lost(outage_db: tuple[Any, str]) -> None:
    server, url = outage_db
    inner = SQLAlchemyEventStore(url, connect_timeout_s=CONNECT_TIMEOUT_S, pool_size=2)
    buf = BufferedEventStore(inner, max_buffer=100, flush_interval_s=None)
    server.stop()
    buf.record_exposure(exposure("r1"))
    buf.record_exposure(exposure("r2"))
    started = time.monotonic()
    buf.close()
    assert time.monotonic() - started < CONNECT_TIMEOUT_S + 3
    assert buf.stats() == {"buffered": 2, "flushed": 0, "lost": 2, "rejected": 0, "pending": 0}


def test_exposures_are_buffered_while_sqlite_is_locked(sqlite_url: str) -> None:
    """No server needed: a writer holding the SQLite lock past the busy timeout is an outage too."""
    buf = make_event_store(sqlite_url, buffered=True, busy_timeout_ms=100)
    assert isinstance(buf, BufferedEventStore)
    buf.close()  # replace the default (background thread) by a manual one
    inner = SQLAlchemyEventStore(sqlite_url, busy_timeout_ms=100)
    buf = BufferedEventStore(inner, max_buffer=10, flush_interval_s=None, retry_after_s=0.0)
    try:
        buf.record_exposure(exposure("r0"))
        locker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            for i in range(1, 4):
                buf.record_exposure(exposure(f"r{i}"))
            buf.record_exposure(exposure("r1"))  # duplicate of a buffered one
            buf.record_exposure(exposure("bad", latency_ms=-5.0))  # invalid: dropped, not raised
            assert buf.stats() == {"buffered": 3, "flushed": 0, "lost": 0, "rejected": 2, "pending": 3}
            with pytest.raises(UnavailableError):
                buf.record_outcome(click("c1", "r1"))
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        # r3's first write "may have committed" (the ambiguous case): the flush must skip it, not fail
        inner.record_exposure(exposure("r3"))
        assert buf.flush() == 3
        assert stored_ids(inner) == ["r0", "r1", "r2", "r3"]
        assert buf.record_outcome(click("c1", "r1")) is True
        buf.record_exposure(exposure("r0"))  # a duplicate of a stored one: rejected, not raised
        assert buf.stats() == {"buffered": 3, "flushed": 3, "lost": 0, "rejected": 3, "pending": 0}
    finally:
        buf.close()
