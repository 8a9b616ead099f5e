"""The SQL event store: the same tests on SQLite and on a real PostgreSQL (congruence), plus SQLite with
several writer processes and a killed writer."""

from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from appsim.backends.event_store import (
    MIGRATIONS,
    Migration,
    SQLAlchemyEventStore,
    make_event_store,
    migrate,
)
from appsim.errors import ConflictError, NotFoundError, UnavailableError, ValidationError
from appsim.services.ab_events import EXPOSURE_COLUMNS, OUTCOME_COLUMNS, Exposure, Outcome

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def exposure(request_id: str, experiment_id: str = "exp-1", **kw: object) -> Exposure:
    fields: dict[str, object] = {
        "unit_id": f"user-{request_id}",
        "variant": "control",
        "model_version": "v1",
        "endpoint": "/v1/similar",
        "latency_ms": 12.5,
        "error": None,
        "forced": False,
        "ts": T0,
    }
    fields.update(kw)
    return Exposure(request_id=request_id, experiment_id=experiment_id, **fields)  # type: ignore[arg-type]


def outcome(
    event_id: str, request_id: str, kind: str = "click", value: float = 1.0, ts: datetime = T0
) -> Outcome:
    return Outcome(event_id=event_id, request_id=request_id, kind=kind, value=value, ts=ts)  # type: ignore[arg-type]


def count_rows(url: str, table: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(sa.text(f"SELECT count(*) FROM {table}")))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    """The same test on a SQLite file and on a fresh PostgreSQL database."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def store(url: str) -> Iterator[SQLAlchemyEventStore]:
    s = SQLAlchemyEventStore(url)
    yield s
    s.close()


# ------------------------------------------------------------------------------------- congruence


def test_record_and_read_exposures(store: SQLAlchemyEventStore) -> None:
    cest = timezone(timedelta(hours=2))
    store.record_exposure(
        exposure("r2", variant="treatment", model_version="v2", ts=T0 + timedelta(seconds=1))
    )
    store.record_exposure(
        exposure(
            "r1",
            error="timeout",
            forced=True,
            latency_ms=250.0,
            ts=(T0 - timedelta(seconds=1)).astimezone(cest),
        )
    )
    store.record_exposure(exposure("r3", experiment_id="exp-2"))
    store.record_exposure(exposure("r4", ts=T0.replace(tzinfo=None)))  # naive = UTC

    df = store.exposures("exp-1")
    assert list(df.columns) == list(EXPOSURE_COLUMNS)
    assert list(df["request_id"]) == ["r1", "r4", "r2"]  # ts order; r3 is another experiment
    assert str(df["ts"].dtype) == "datetime64[ns, UTC]"
    assert df["forced"].dtype == bool and df["latency_ms"].dtype == "float64"
    first = df.iloc[0]
    assert first["ts"] == pd.Timestamp(T0 - timedelta(seconds=1))  # same instant, stored as UTC
    assert first["error"] == "timeout" and bool(first["forced"]) and first["latency_ms"] == 250.0
    assert df.iloc[1]["ts"] == pd.Timestamp(T0) and df.iloc[1]["error"] is None
    assert df.iloc[2][["variant", "model_version"]].tolist() == ["treatment", "v2"]
    assert list(store.exposures("exp-2")["request_id"]) == ["r3"]

    empty = store.exposures("nope")
    assert empty.empty and list(empty.columns) == list(EXPOSURE_COLUMNS)
    assert (empty.dtypes == df.dtypes).all()


def test_batch_exposures(store: SQLAlchemyEventStore, url: str) -> None:
    batch = [exposure(f"b{i}", unit_id=f"u{i % 7}", latency_ms=float(i)) for i in range(120)]
    assert store.record_exposures(batch) == 120
    assert store.record_exposures([]) == 0
    # re-sending (buffer flush after an ambiguous commit): duplicates skipped, new ones written
    assert store.record_exposures([*batch[:50], exposure("b-new")], ignore_duplicates=True) == 1
    assert count_rows(url, "exposures") == 121
    df = store.exposures("exp-1")
    assert sorted(df["request_id"]) == sorted([e.request_id for e in batch] + ["b-new"])
    assert df.set_index("request_id").loc["b7", "latency_ms"] == 7.0


def test_duplicate_exposure_is_a_conflict_and_writes_nothing(store: SQLAlchemyEventStore, url: str) -> None:
    store.record_exposure(exposure("r1", variant="control"))
    with pytest.raises(ConflictError) as info:
        store.record_exposure(exposure("r1", variant="treatment"))
    assert info.value.field == "request_id"
    df = store.exposures("exp-1")
    assert list(df["variant"]) == ["control"]

    # a batch with one known id: nothing of it is written
    with pytest.raises(ConflictError) as info:
        store.record_exposures([exposure("r2"), exposure("r1"), exposure("r3")])
    assert info.value.extra["request_ids"] == ["r1"]
    # a batch repeating an id
    with pytest.raises(ConflictError):
        store.record_exposures([exposure("r4"), exposure("r4")])
    assert count_rows(url, "exposures") == 1


def test_outcomes_are_idempotent_and_joined(store: SQLAlchemyEventStore, url: str) -> None:
    store.record_exposure(exposure("r1", variant="treatment", unit_id="alice", forced=True))
    store.record_exposure(exposure("r2", variant="control", unit_id="bob"))
    assert store.record_outcome(outcome("e1", "r1", "impression")) is True
    assert store.record_outcome(outcome("e1", "r1", "impression")) is False  # same event again
    assert store.record_outcome(outcome("e1", "r2", "click", 5.0)) is False  # same id, other content
    assert store.record_outcome(outcome("e2", "r1", "revenue", 4.99, T0 + timedelta(minutes=1))) is True
    assert store.record_outcome(outcome("e3", "r2", "install", 0.0)) is True
    assert count_rows(url, "outcomes") == 3

    df = store.outcomes("exp-1")
    assert list(df.columns) == list(OUTCOME_COLUMNS)
    assert list(df["event_id"]) == ["e1", "e3", "e2"]
    rows = df.set_index("event_id")
    assert rows.loc["e1", ["request_id", "kind", "variant", "unit_id"]].tolist() == [
        "r1",
        "impression",
        "treatment",
        "alice",
    ]
    assert bool(rows.loc["e1", "forced"]) and not bool(rows.loc["e3", "forced"])
    assert rows.loc["e2", "value"] == pytest.approx(4.99)
    assert rows.loc["e2", "ts"] == pd.Timestamp(T0 + timedelta(minutes=1))
    assert str(df["ts"].dtype) == "datetime64[ns, UTC]" and df["forced"].dtype == bool
    assert store.outcomes("other").empty


def test_outcome_of_unknown_request_is_not_found(store: SQLAlchemyEventStore, url: str) -> None:
    store.record_exposure(exposure("r1"))
    with pytest.raises(NotFoundError) as info:
        store.record_outcome(outcome("e1", "no-such-request"))
    assert info.value.field == "request_id"
    assert count_rows(url, "outcomes") == 0
    assert store.record_outcome(outcome("e1", "r1")) is True  # the event id was not used up


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "purchase"}, "kind"),
        ({"value": -1.0}, "value"),
        ({"value": math.nan}, "value"),
        ({"value": math.inf}, "value"),
        ({"value": "3"}, "value"),
        ({"event_id": ""}, "event_id"),
        ({"ts": "2024-01-01"}, "ts"),
        ({"ts": datetime(2999, 1, 1, tzinfo=UTC)}, "ts"),
    ],
)
def test_invalid_outcome_is_refused_and_writes_nothing(
    store: SQLAlchemyEventStore, url: str, change: dict[str, object], field: str
) -> None:
    store.record_exposure(exposure("r1"))
    fields: dict[str, object] = {
        "event_id": "e1",
        "request_id": "r1",
        "kind": "click",
        "value": 1.0,
        "ts": T0,
    }
    fields.update(change)
    with pytest.raises(ValidationError) as info:
        store.record_outcome(Outcome(**fields))  # type: ignore[arg-type]
    assert info.value.field == field
    assert count_rows(url, "outcomes") == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"latency_ms": -1.0}, "latency_ms"),
        ({"latency_ms": math.nan}, "latency_ms"),
        ({"request_id": ""}, "request_id"),
        ({"variant": "x" * 300}, "variant"),
        ({"forced": 1}, "forced"),
    ],
)
def test_invalid_exposure_is_refused(
    store: SQLAlchemyEventStore, url: str, change: dict[str, object], field: str
) -> None:
    bad = dataclasses.replace(exposure("r1"), **change)  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as info:
        store.record_exposure(bad)
    assert info.value.field == field
    with pytest.raises(ValidationError) as info:
        store.record_exposures([exposure("ok"), bad])
    assert info.value.field == field and info.value.extra["index"] == 1
    assert count_rows(url, "exposures") == 0


def test_audit_log(store: SQLAlchemyEventStore) -> None:
    assert store.audit_log() == []
    store.record_audit("alice", "experiment.start", {"experiment_id": "exp-1", "split": [0.5, 0.5]})
    store.record_audit("bob", "experiment.force", {"unit_id": "u1", "variant": "treatment", "at": T0})
    store.record_audit("alice", "experiment.stop", {})
    entries = store.audit_log(limit=2)
    assert [e["action"] for e in entries] == ["experiment.stop", "experiment.force"]  # newest first
    assert entries[1]["payload"] == {"unit_id": "u1", "variant": "treatment", "at": str(T0)}
    assert entries[1]["actor"] == "bob" and entries[1]["ts"].tzinfo is not None
    assert abs(entries[0]["ts"] - datetime.now(UTC)) < timedelta(minutes=5)
    assert store.audit_log()[-1]["payload"] == {"experiment_id": "exp-1", "split": [0.5, 0.5]}
    with pytest.raises(ValidationError) as info:
        store.record_audit("alice", "x", {"bad": math.nan})
    assert info.value.field == "payload"
    with pytest.raises(ValidationError):
        store.audit_log(limit=0)
    assert len(store.audit_log(limit=100)) == 3


def test_migrations_rerun_idempotently(store: SQLAlchemyEventStore, url: str) -> None:
    assert store.schema_version() == MIGRATIONS[-1].version
    assert migrate(store.engine) == []
    store.record_exposure(exposure("r1"))
    again = SQLAlchemyEventStore(url)  # a restart runs the migrations again: no-op
    again.close()
    assert count_rows(url, "schema_version") == len(MIGRATIONS)

    extra = Migration(
        MIGRATIONS[-1].version + 1,
        "test: index on unit_id",
        ["CREATE INDEX ix_test_exposures_unit ON exposures (unit_id)"],
    )
    assert migrate(store.engine, [*MIGRATIONS, extra]) == [extra.version]
    assert migrate(store.engine, [*MIGRATIONS, extra]) == []
    assert store.schema_version() == extra.version
    broken = Migration(
        extra.version + 1,
        "test: fails half-way",
        ["CREATE TABLE half_done (x INTEGER)", "CREATE TABLE broken ("],
    )
    with pytest.raises(sa.exc.DBAPIError):
        migrate(store.engine, [*MIGRATIONS, extra, broken])
    assert store.schema_version() == extra.version  # rolled back whole: nothing recorded
    assert "half_done" not in sa.inspect(store.engine).get_table_names()
    assert list(store.exposures("exp-1")["request_id"]) == ["r1"]


def test_data_survives_close_and_reopen(url: str) -> None:
    first = make_event_store(url)
    assert isinstance(first, SQLAlchemyEventStore)
    first.record_exposures([exposure(f"r{i}") for i in range(10)])
    first.record_outcome(outcome("e1", "r1"))
    first.record_audit("alice", "experiment.start", {"experiment_id": "exp-1"})
    first.close()
    first.close()  # idempotent

    second = SQLAlchemyEventStore(url)
    try:
        assert len(second.exposures("exp-1")) == 10
        assert list(second.outcomes("exp-1")["event_id"]) == ["e1"]
        assert second.record_outcome(outcome("e1", "r1")) is False  # idempotency survives the restart
        assert second.audit_log()[0]["payload"] == {"experiment_id": "exp-1"}
        assert second.health()
    finally:
        second.close()


def test_health_and_unreachable_database(store: SQLAlchemyEventStore, tmp_path: Path) -> None:
    assert store.health()
    with pytest.raises(UnavailableError):
        SQLAlchemyEventStore("postgresql+psycopg://postgres@127.0.0.1:1/none", connect_timeout_s=1)
    with pytest.raises(ValidationError):
        make_event_store("mysql://x@localhost/db")
    memory = make_event_store("sqlite://")
    assert memory.health()
    memory.close()


@pytest.mark.postgres
def test_backends_return_identical_frames(sqlite_url: str, pg_url: str) -> None:
    frames = []
    for url in (sqlite_url, pg_url):
        with SQLAlchemyEventStore(url) as s:
            s.record_exposures(
                [
                    exposure(
                        f"r{i}",
                        variant=("control", "treatment")[i % 2],
                        forced=i == 3,
                        error="boom" if i == 4 else None,
                        latency_ms=i * 1.25,
                        ts=T0 + timedelta(milliseconds=i),
                    )
                    for i in range(6)
                ]
            )
            for i in range(6):
                s.record_outcome(
                    outcome(
                        f"e{i}",
                        f"r{i}",
                        ("impression", "click", "revenue")[i % 3],
                        i / 3,
                        T0 + timedelta(seconds=i),
                    )
                )
            frames.append((s.exposures("exp-1"), s.outcomes("exp-1")))
    pd.testing.assert_frame_equal(frames[0][0], frames[1][0])
    pd.testing.assert_frame_equal(frames[0][1], frames[1][1])


# ---------------------------------------------------------------------------------- multi-process


def _writer(url: str, worker: int, n: int, barrier: object) -> None:
    """Spawned: open the store (migrations run concurrently too), write ``n`` exposures one by one with an
    outcome each, and a batch of ``n``."""
    barrier.wait(timeout=60)  # type: ignore[attr-defined]
    store = SQLAlchemyEventStore(url, busy_timeout_ms=30_000)
    for i in range(n):
        store.record_exposure(exposure(f"w{worker}-{i}", unit_id=f"w{worker}"))
        assert store.record_outcome(outcome(f"w{worker}-{i}-click", f"w{worker}-{i}"))
    store.record_exposures([exposure(f"w{worker}-batch-{i}") for i in range(n)])
    store.close()


def _crashing_writer(url: str, n: int) -> None:
    """Spawned: write ``n`` exposures, then die by SIGKILL without closing anything."""
    store = SQLAlchemyEventStore(url)
    for i in range(n):
        store.record_exposure(exposure(f"k{i}"))
    os.kill(os.getpid(), signal.SIGKILL)


def test_sqlite_concurrent_writer_processes(sqlite_url: str) -> None:
    workers, n = 4, 60
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_writer, args=(sqlite_url, w, n, barrier)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0] * workers
    assert count_rows(sqlite_url, "exposures") == workers * 2 * n
    assert count_rows(sqlite_url, "outcomes") == workers * n
    assert count_rows(sqlite_url, "schema_version") == len(MIGRATIONS)
    with SQLAlchemyEventStore(sqlite_url) as s:
        df = s.exposures("exp-1")
        assert df["request_id"].is_unique and len(df) == workers * 2 * n


def test_sqlite_committed_events_survive_a_killed_process(sqlite_url: str) -> None:
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_crashing_writer, args=(sqlite_url, 25))
    p.start()
    p.join(timeout=120)
    assert p.exitcode == -signal.SIGKILL
    with SQLAlchemyEventStore(sqlite_url) as s:
        assert len(s.exposures("exp-1")) == 25
