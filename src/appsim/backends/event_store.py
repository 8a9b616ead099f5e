"""SQL event store of the A/B experiments (SQLAlchemy Core): SQLite (default) and PostgreSQL.

Tables: ``exposures`` (primary key ``request_id``), ``outcomes`` (primary key ``event_id``, foreign key
``request_id`` -> exposures), ``audit_log`` and ``schema_version``.

URLs::

    sqlite:///var/events.sqlite                       a file (parent folder created); the default
    sqlite://  or  sqlite:///:memory:                 in memory, one connection (tests)
    postgresql+psycopg://user:pw@host:5432/appsim     ("postgresql://" is taken to mean psycopg 3)

SQLite runs in WAL mode with ``busy_timeout`` and ``synchronous=FULL`` (a committed event survives a crash
of the process and of the machine); every write transaction starts with ``BEGIN IMMEDIATE``, so several
worker processes can write the same file concurrently: a writer waits for the lock up to the busy timeout
instead of failing on a read-to-write lock upgrade. Give each process its own store (never share one
across ``fork``).

Timestamps are stored as UTC (``timestamptz`` on PostgreSQL, ISO text on SQLite) and read back as
timezone-aware UTC; a naive ``datetime`` is taken to be UTC already.

Errors (:mod:`appsim.errors`): invalid input -> ``ValidationError`` naming the field; duplicate exposure
``request_id`` -> ``ConflictError``; outcome of an unknown ``request_id`` -> ``NotFoundError``; database
unreachable, locked past the busy timeout or connection lost -> ``UnavailableError``. A failed call writes
nothing (one transaction per call).

Migrations
----------
:data:`MIGRATIONS` is an ordered list of ``Migration(version, description, steps)``; ``steps`` is a list of
SQL statements or a callable taking the connection. :func:`migrate` (run by the store on start) applies,
in ONE transaction, every migration whose version is not yet in ``schema_version`` and records it there;
re-running it is a no-op, and concurrent starts are serialised (``BEGIN IMMEDIATE`` on SQLite, a
transaction-level advisory lock on PostgreSQL). To change the schema, append ``Migration(N + 1, ...)`` with
explicit DDL valid on both dialects (or a callable that branches on ``conn.dialect.name``), then update the
query tables (``_TABLES``); never edit a released migration: ``_create_v1`` is frozen.

Outage tolerance
----------------
:class:`BufferedEventStore` wraps a store for the API: exposures never raise and never block for long; while
the database is unavailable they wait in a bounded in-memory queue and are written later (background
thread, ``flush()``, or the next successful write). Counters: ``buffered``, ``flushed``, ``lost``,
``rejected`` (cumulative) and ``pending`` (queue length now).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pandas as pd
import sqlalchemy as sa
import structlog
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine

from appsim.errors import AppsimError, ConflictError, NotFoundError, UnavailableError, ValidationError
from appsim.services.ab_events import (
    EXPOSURE_COLUMNS,
    OUTCOME_COLUMNS,
    OUTCOME_KINDS,
    EventStore,
    Exposure,
    Outcome,
)

log = structlog.get_logger(__name__)

DEFAULT_URL = "sqlite:///var/events.sqlite"
MAX_ID_LENGTH = 256
MAX_AUDIT_LIMIT = 10_000
_PG_MIGRATION_LOCK = 0x61707073  # pg_advisory_xact_lock key of the migration runner ("apps")
_WRITE = "appsim_write"  # execution option: this connection's transaction writes (SQLite: BEGIN IMMEDIATE)

_STRING_COLUMNS = (
    "request_id",
    "experiment_id",
    "unit_id",
    "variant",
    "model_version",
    "endpoint",
    "error",
    "event_id",
    "kind",
)
_DTYPES: dict[str, str] = {
    **dict.fromkeys(_STRING_COLUMNS, "object"),
    "latency_ms": "float64",
    "value": "float64",
    "forced": "bool",
    "ts": "datetime64[ns, UTC]",
}


# --------------------------------------------------------------------------------------------- schema


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC ``datetime`` on both dialects (naive input is taken to be UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = to_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def to_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC ``datetime`` (a pandas Timestamp becomes a plain datetime, to the µs)."""
    to_py = getattr(value, "to_pydatetime", None)
    if to_py is not None:
        value = to_py()
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _define_v1(md: sa.MetaData) -> dict[str, sa.Table]:
    """The schema of migration 1, defined in ``md``. Frozen: later changes go in new migrations."""
    exposures = sa.Table(
        "exposures",
        md,
        sa.Column("request_id", sa.String, primary_key=True),
        sa.Column("experiment_id", sa.String, nullable=False),
        sa.Column("unit_id", sa.String, nullable=False),
        sa.Column("variant", sa.String, nullable=False),
        sa.Column("model_version", sa.String, nullable=False),
        sa.Column("endpoint", sa.String, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("forced", sa.Boolean, nullable=False),
        sa.Column("ts", UTCDateTime, nullable=False),
        sa.Index("ix_exposures_experiment_ts", "experiment_id", "ts"),
    )
    kinds = ", ".join(f"'{k}'" for k in OUTCOME_KINDS)
    outcomes = sa.Table(
        "outcomes",
        md,
        sa.Column("event_id", sa.String, primary_key=True),
        sa.Column("request_id", sa.String, sa.ForeignKey("exposures.request_id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("ts", UTCDateTime, nullable=False),
        sa.CheckConstraint(f"kind IN ({kinds})", name="ck_outcomes_kind"),
        sa.CheckConstraint("value >= 0", name="ck_outcomes_value"),
        sa.Index("ix_outcomes_request_id", "request_id"),
    )
    audit_log = sa.Table(
        "audit_log",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", UTCDateTime, nullable=False),
        sa.Column("actor", sa.String, nullable=False),
        sa.Column("action", sa.String, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),  # JSON text
    )
    return {"exposures": exposures, "outcomes": outcomes, "audit_log": audit_log}


_SCHEMA_VERSION = sa.Table(
    "schema_version",
    sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.String, nullable=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
)
_TABLES = _define_v1(sa.MetaData())  # the tables queries use (= the latest schema)
_EXPOSURES, _OUTCOMES, _AUDIT = _TABLES["exposures"], _TABLES["outcomes"], _TABLES["audit_log"]


# ----------------------------------------------------------------------------------------- migrations


@dataclass(frozen=True)
class Migration:
    """One schema step: ``steps`` are SQL statements (run in order) or a callable taking the connection."""

    version: int
    description: str
    steps: Sequence[str] | Callable[[Connection], None]


def _create_v1(conn: Connection) -> None:
    md = sa.MetaData()
    _define_v1(md)
    md.create_all(conn, checkfirst=False)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "exposures, outcomes, audit_log and their indexes", _create_v1),
)


def migrate(engine: Engine, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply the migrations not yet recorded in ``schema_version``, in version order, in one transaction.

    Returns the versions applied now (``[]`` when up to date). Safe to call from several processes at
    once. Raises ``ValueError`` if two migrations share a version, ``UnavailableError`` if the database is
    unreachable; a failing migration rolls everything back (nothing recorded).
    """
    ordered = sorted(migrations, key=lambda m: m.version)
    versions = [m.version for m in ordered]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {versions}")
    applied_now: list[int] = []
    with _db_errors("migrate"), engine.connect() as conn:
        conn.execution_options(**{_WRITE: True})
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
            _SCHEMA_VERSION.create(conn, checkfirst=True)
            done = set(conn.scalars(sa.select(_SCHEMA_VERSION.c.version)))
            for m in ordered:
                if m.version in done:
                    continue
                if callable(m.steps):
                    m.steps(conn)
                else:
                    for statement in m.steps:
                        conn.exec_driver_sql(statement)
                conn.execute(
                    _SCHEMA_VERSION.insert().values(
                        version=m.version, description=m.description, applied_at=datetime.now(UTC)
                    )
                )
                applied_now.append(m.version)
    unknown = sorted(done - set(versions))
    if unknown:
        log.warning("event_store.schema_newer_than_code", unknown_versions=unknown, known=versions)
    if applied_now:
        log.info("event_store.migrated", applied=applied_now)
    return applied_now


# ------------------------------------------------------------------------------------------ engine


def _normalise_url(url: str | sa.URL) -> sa.URL:
    u = sa.make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def _make_engine(url: sa.URL, *, connect_timeout_s: float, busy_timeout_ms: int, pool_size: int) -> Engine:
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _make_sqlite_engine(url, busy_timeout_ms=busy_timeout_ms, pool_size=pool_size)
    if backend == "postgresql":
        if url.get_driver_name() != "psycopg":
            raise ValidationError(
                f"unsupported PostgreSQL driver {url.drivername!r}; use postgresql+psycopg", field="url"
            )
        timeout = max(1, math.ceil(connect_timeout_s))
        connect_args: dict[str, Any] = {
            "connect_timeout": timeout,
            "application_name": "appsim-events",
            # a dead peer fails a pending write after ~timeout instead of hanging on TCP retransmits
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": timeout * 1000,
        }
        return sa.create_engine(
            url,
            connect_args=connect_args,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_timeout=connect_timeout_s,
            pool_pre_ping=True,
        )
    raise ValidationError(
        f"unsupported event store URL {url.render_as_string()!r} (sqlite or postgresql)", field="url"
    )


def _make_sqlite_engine(url: sa.URL, *, busy_timeout_ms: int, pool_size: int) -> Engine:
    memory = url.database in (None, "", ":memory:")
    if memory:
        engine = sa.create_engine(
            "sqlite://", poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        Path(cast(str, url.database)).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
        )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cur.execute("PRAGMA foreign_keys = ON")
            if not memory:
                cur.execute("PRAGMA journal_mode = WAL")
                cur.execute("PRAGMA synchronous = FULL")
        finally:
            cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")

    return engine


_SQLITE_TRANSIENT = ("locked", "busy", "unable to open", "disk i/o")


def _is_transient(exc: sa_exc.DBAPIError) -> bool:
    if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
        return True
    if not isinstance(exc, sa_exc.OperationalError):
        return False
    module = type(exc.orig).__module__ if exc.orig is not None else ""
    if module.startswith("sqlite3"):
        message = str(exc.orig).lower()
        return any(marker in message for marker in _SQLITE_TRANSIENT)
    return True  # psycopg: connection refused / lost, admin shutdown, timeouts


@contextmanager
def _db_errors(operation: str) -> Iterator[None]:
    """Turn "database unavailable" driver errors into ``UnavailableError``; others pass through."""
    try:
        yield
    except sa_exc.TimeoutError as exc:  # no pool connection within pool_timeout
        raise UnavailableError(f"event store unavailable ({operation}): {exc}") from exc
    except sa_exc.DBAPIError as exc:
        if _is_transient(exc):
            reason = str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc).strip() else "error"
            raise UnavailableError(f"event store unavailable ({operation}): {reason}") from exc
        raise


def _is_unique_violation(exc: sa_exc.IntegrityError) -> bool:
    if getattr(exc.orig, "sqlstate", None) == "23505":
        return True
    return "unique constraint failed" in str(exc.orig).lower()


# ------------------------------------------------------------------------------------- validation


def _check_id(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{field} must be a non-empty string", field=field)
    if len(value) > MAX_ID_LENGTH:
        raise ValidationError(f"{field} longer than {MAX_ID_LENGTH} characters", field=field)
    return value


def _check_ts(value: object, field: str = "ts") -> datetime:
    if not isinstance(value, datetime):
        raise ValidationError(f"{field} must be a datetime, got {type(value).__name__}", field=field)
    if not 1970 <= value.year <= 2200:  # outside, pandas' datetime64[ns] could not represent it on read
        raise ValidationError(f"{field} must be between 1970 and 2200, got {value.isoformat()}", field=field)
    return to_utc(value)


# One event's value: a count (impressions, clicks, installs) or revenue in USD. A cap keeps a single bad
# or hostile event from overflowing an arm's sums (1e308 would turn its revenue metric into inf).
MAX_OUTCOME_VALUE = 1_000_000.0


def _check_number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{field} must be a number, got {type(value).__name__}", field=field)
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValidationError(f"{field} must be finite and >= 0, got {number!r}", field=field)
    return number


def validate_exposure(e: Exposure) -> dict[str, Any]:
    """The row of ``e``; raises ``ValidationError`` (field named) for empty / over-long ids, a negative or
    non-finite ``latency_ms``, a non-bool ``forced``, a non-string ``error`` or a non-datetime ``ts``."""
    row: dict[str, Any] = {
        name: _check_id(getattr(e, name), name)
        for name in ("request_id", "experiment_id", "unit_id", "variant", "model_version", "endpoint")
    }
    row["latency_ms"] = _check_number(e.latency_ms, "latency_ms")
    if e.error is not None and not isinstance(e.error, str):
        raise ValidationError("error must be a string or None", field="error")
    row["error"] = e.error
    if not isinstance(e.forced, bool):
        raise ValidationError("forced must be a bool", field="forced")
    row["forced"] = e.forced
    row["ts"] = _check_ts(e.ts)
    return row


def validate_outcome(o: Outcome) -> dict[str, Any]:
    """The row of ``o``; raises ``ValidationError`` naming ``event_id``, ``request_id``, ``kind`` (not one
    of impression / click / install / revenue), ``value`` (not finite or < 0) or ``ts``."""
    row: dict[str, Any] = {
        "event_id": _check_id(o.event_id, "event_id"),
        "request_id": _check_id(o.request_id, "request_id"),
    }
    if o.kind not in OUTCOME_KINDS:
        raise ValidationError(f"kind must be one of {', '.join(OUTCOME_KINDS)}, got {o.kind!r}", field="kind")
    row["kind"] = o.kind
    row["value"] = _check_number(o.value, "value")
    if row["value"] > MAX_OUTCOME_VALUE:
        raise ValidationError(
            f"value must be at most {MAX_OUTCOME_VALUE:g} (USD for revenue, a count otherwise), "
            f"got {row['value']!r}",
            field="value",
        )
    row["ts"] = _check_ts(o.ts)
    return row


def _frame(rows: Sequence[Any], columns: Sequence[str]) -> pd.DataFrame:
    """A DataFrame with fixed dtypes (same on both dialects, empty or not)."""
    df = pd.DataFrame.from_records([tuple(r) for r in rows], columns=list(columns))
    for name in columns:
        dtype = _DTYPES[name]
        if dtype.startswith("datetime64"):
            df[name] = pd.to_datetime(df[name], utc=True).astype(dtype)
        elif dtype == "object":
            df[name] = df[name].astype(object).where(df[name].notna(), None)
        else:
            df[name] = df[name].astype(dtype)
    return df


# ------------------------------------------------------------------------------------------- store


class SQLAlchemyEventStore:
    """``EventStore`` on SQLite or PostgreSQL (see the module docstring for URLs, errors and migrations).

    ``connect_timeout_s``: seconds to open a PostgreSQL connection or wait for a pooled one;
    ``busy_timeout_ms``: how long a SQLite writer waits for the file lock; ``migrate_on_start``: run
    :func:`migrate` in the constructor (raises ``UnavailableError`` if the database is unreachable then).
    """

    def __init__(
        self,
        url: str | sa.URL = DEFAULT_URL,
        *,
        connect_timeout_s: float = 3.0,
        busy_timeout_ms: int = 5000,
        pool_size: int = 5,
        migrate_on_start: bool = True,
    ) -> None:
        self.url = _normalise_url(url)
        self.dialect = self.url.get_backend_name()
        self._engine = _make_engine(
            self.url,
            connect_timeout_s=connect_timeout_s,
            busy_timeout_ms=busy_timeout_ms,
            pool_size=pool_size,
        )
        if migrate_on_start:
            try:
                migrate(self._engine)
            except BaseException:
                self._engine.dispose()
                raise

    def __repr__(self) -> str:
        return f"SQLAlchemyEventStore({self.url.render_as_string(hide_password=True)!r})"

    @property
    def engine(self) -> Engine:
        return self._engine

    @contextmanager
    def _write(self, operation: str) -> Iterator[Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE); commits on success, rolls back on error."""
        with _db_errors(operation), self._engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self, operation: str) -> Iterator[Connection]:
        with _db_errors(operation), self._engine.connect() as conn:
            yield conn

    def _insert(self, table: sa.Table) -> Any:
        return pg_dialect.insert(table) if self.dialect == "postgresql" else sqlite_dialect.insert(table)

    # ---- writes

    def record_exposure(self, e: Exposure) -> None:
        """Store one exposure. Raises ``ValidationError``, ``ConflictError`` (``request_id`` already recorded;
        nothing written) or ``UnavailableError``."""
        row = validate_exposure(e)
        try:
            with self._write("record_exposure") as conn:
                conn.execute(_EXPOSURES.insert(), [row])
        except sa_exc.IntegrityError as exc:
            if _is_unique_violation(exc):
                raise ConflictError(
                    f"exposure {e.request_id!r} already recorded",
                    field="request_id",
                    request_ids=[e.request_id],
                ) from exc
            raise

    def record_exposures(self, exposures: Sequence[Exposure], *, ignore_duplicates: bool = False) -> int:
        """Store a batch in one transaction; returns the number of rows inserted.

        All are validated first (``ValidationError`` names the field; ``extra['index']`` the position). With
        ``ignore_duplicates=False`` a ``request_id`` already stored or repeated in the batch raises
        ``ConflictError`` (``extra['request_ids']``) and nothing is written; with ``True`` those are skipped
        (used to re-send buffered exposures whose first write may have committed).
        """
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        repeated: list[str] = []
        for index, e in enumerate(exposures):
            try:
                row = validate_exposure(e)
            except ValidationError as exc:
                raise ValidationError(
                    f"exposures[{index}]: {exc.detail}", field=exc.field, index=index
                ) from exc
            if row["request_id"] in seen:
                repeated.append(row["request_id"])
                continue
            seen.add(row["request_id"])
            rows.append(row)
        if repeated and not ignore_duplicates:
            raise ConflictError(
                f"request ids repeated in the batch: {sorted(set(repeated))[:10]}",
                field="request_id",
                request_ids=sorted(set(repeated)),
            )
        if not rows:
            return 0
        if ignore_duplicates:
            stmt = self._insert(_EXPOSURES).on_conflict_do_nothing(index_elements=["request_id"])
            with self._write("record_exposures") as conn:
                return len(conn.execute(stmt.returning(_EXPOSURES.c.request_id), rows).all())
        try:
            with self._write("record_exposures") as conn:
                conn.execute(_EXPOSURES.insert(), rows)
        except sa_exc.IntegrityError as exc:
            if not _is_unique_violation(exc):
                raise
            existing = self._existing_request_ids([r["request_id"] for r in rows])
            raise ConflictError(
                f"exposures already recorded: {existing[:10]}", field="request_id", request_ids=existing
            ) from exc
        return len(rows)

    def _existing_request_ids(self, request_ids: Sequence[str]) -> list[str]:
        found: list[str] = []
        with self._read("exposures") as conn:
            for start in range(0, len(request_ids), 500):
                chunk = list(request_ids[start : start + 500])
                found.extend(
                    conn.scalars(sa.select(_EXPOSURES.c.request_id).where(_EXPOSURES.c.request_id.in_(chunk)))
                )
        return sorted(found)

    def record_outcome(self, o: Outcome) -> bool:
        """Store an outcome; ``False`` when ``event_id`` was already recorded (nothing changes, even if the
        other fields differ). Raises ``ValidationError``, ``NotFoundError`` (no exposure ``request_id``;
        nothing written) or ``UnavailableError``."""
        row = validate_outcome(o)
        stmt = (
            self._insert(_OUTCOMES)
            .values(**row)
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(_OUTCOMES.c.event_id)
        )
        try:
            with self._write("record_outcome") as conn:
                known = conn.scalar(
                    sa.select(sa.literal(1)).where(_EXPOSURES.c.request_id == row["request_id"])
                )
                if known is None:
                    raise NotFoundError(
                        f"no exposure recorded for request_id {o.request_id!r}", field="request_id"
                    )
                return conn.execute(stmt).first() is not None
        except sa_exc.IntegrityError as exc:  # foreign key: cannot happen after the check, kept as a guard
            raise NotFoundError(
                f"no exposure recorded for request_id {o.request_id!r}", field="request_id"
            ) from exc

    def record_outcomes(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Store a batch of outcomes in ONE transaction, all or nothing; returns, per input, ``True`` when it
        was recorded now and ``False`` when its ``event_id`` was already recorded (or repeated earlier in
        the batch: the first occurrence wins).

        Raises ``ValidationError`` (``extra['index']`` the position, ``field`` the field), ``NotFoundError``
        when any ``request_id`` has no exposure (``extra['index']`` the first such position,
        ``extra['request_ids']`` all of them; nothing written) or ``UnavailableError``.
        """
        rows: list[dict[str, Any]] = []
        for index, o in enumerate(outcomes):
            try:
                rows.append(validate_outcome(o))
            except ValidationError as exc:
                raise ValidationError(
                    f"outcomes[{index}]: {exc.detail}", field=exc.field, index=index
                ) from exc
        if not rows:
            return []
        first_of: dict[str, int] = {}
        for index, row in enumerate(rows):
            first_of.setdefault(row["event_id"], index)
        unique = [rows[i] for i in sorted(first_of.values())]
        request_ids = sorted({row["request_id"] for row in rows})
        stmt = self._insert(_OUTCOMES).on_conflict_do_nothing(index_elements=["event_id"])
        with self._write("record_outcomes") as conn:
            known: set[str] = set()
            for start in range(0, len(request_ids), 500):
                chunk = request_ids[start : start + 500]
                known.update(
                    conn.scalars(sa.select(_EXPOSURES.c.request_id).where(_EXPOSURES.c.request_id.in_(chunk)))
                )
            missing = [i for i, row in enumerate(rows) if row["request_id"] not in known]
            if missing:
                first = rows[missing[0]]["request_id"]
                raise NotFoundError(
                    f"no exposure recorded for request_id {first!r}"
                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                    field="request_id",
                    index=missing[0],
                    request_ids=sorted({rows[i]["request_id"] for i in missing}),
                )
            inserted = set(conn.execute(stmt.returning(_OUTCOMES.c.event_id), unique).scalars())
        return [first_of[row["event_id"]] == i and row["event_id"] in inserted for i, row in enumerate(rows)]

    def record_audit(self, actor: str, action: str, payload: dict) -> None:
        """Append an audit entry (``ts`` = now, UTC). ``payload`` must be a JSON-serialisable dict (values
        that are not JSON types are stored as ``str(value)``; NaN / inf are refused). Raises
        ``ValidationError`` or ``UnavailableError``."""
        _check_id(actor, "actor")
        _check_id(action, "action")
        if not isinstance(payload, dict):
            raise ValidationError("payload must be a dict", field="payload")
        try:
            text = json.dumps(payload, sort_keys=True, default=str, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"payload is not JSON-serialisable: {exc}", field="payload") from exc
        with self._write("record_audit") as conn:
            conn.execute(
                _AUDIT.insert().values(ts=datetime.now(UTC), actor=actor, action=action, payload=text)
            )

    # ---- reads

    def exposures(self, experiment_id: str) -> pd.DataFrame:
        """The experiment's exposures, ordered by ``ts`` then ``request_id``; columns ``EXPOSURE_COLUMNS``
        (``ts`` datetime64[ns, UTC], ``latency_ms`` float64 ms, ``forced`` bool, the rest object).
        Raises ``UnavailableError``."""
        query = (
            sa.select(*(_EXPOSURES.c[name] for name in EXPOSURE_COLUMNS))
            .where(_EXPOSURES.c.experiment_id == experiment_id)
            .order_by(_EXPOSURES.c.ts, _EXPOSURES.c.request_id)
        )
        with self._read("exposures") as conn:
            rows = conn.execute(query).all()
        return _frame(rows, EXPOSURE_COLUMNS)

    def outcomes(self, experiment_id: str) -> pd.DataFrame:
        """The experiment's outcomes joined with their exposure's ``variant``, ``unit_id``, ``forced``;
        ordered by ``ts`` then ``event_id``; columns ``OUTCOME_COLUMNS``. Raises ``UnavailableError``."""
        exp, out = _EXPOSURES, _OUTCOMES
        selected = [
            exp.c[name] if name in ("variant", "unit_id", "forced") else out.c[name]
            for name in OUTCOME_COLUMNS
        ]
        query = (
            sa.select(*selected)
            .select_from(out.join(exp, out.c.request_id == exp.c.request_id))
            .where(exp.c.experiment_id == experiment_id)
            .order_by(out.c.ts, out.c.event_id)
        )
        with self._read("outcomes") as conn:
            rows = conn.execute(query).all()
        return _frame(rows, OUTCOME_COLUMNS)

    def audit_log(self, limit: int = 100) -> list[dict]:
        """The latest ``limit`` (1..10000) entries, newest first: dicts ``id``, ``ts`` (aware UTC), ``actor``,
        ``action``, ``payload`` (dict). Raises ``ValidationError`` or ``UnavailableError``."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_AUDIT_LIMIT:
            raise ValidationError(f"limit must be an integer in 1..{MAX_AUDIT_LIMIT}", field="limit")
        query = sa.select(_AUDIT).order_by(_AUDIT.c.id.desc()).limit(limit)
        with self._read("audit_log") as conn:
            rows = conn.execute(query).mappings().all()
        return [{**row, "payload": json.loads(row["payload"])} for row in rows]

    def schema_version(self) -> int:
        """The highest applied migration version (0 if none). Raises ``UnavailableError``."""
        with self._read("schema_version") as conn:
            return int(
                conn.scalar(sa.select(sa.func.coalesce(sa.func.max(_SCHEMA_VERSION.c.version), 0))) or 0
            )

    # ---- lifecycle

    def health(self) -> bool:
        """True when a ``SELECT 1`` succeeds (bounded by the connect / busy timeout); never raises."""
        try:
            with self._engine.connect() as conn:
                conn.execute(sa.select(sa.literal(1)))
            return True
        except Exception:
            return False

    def close(self) -> None:
        """Close all pooled connections (idempotent). Committed data is durable before each call returns."""
        self._engine.dispose()

    def __enter__(self) -> SQLAlchemyEventStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------------- buffered


class BufferedEventStore:
    """Outage-tolerant wrapper for the API: exposures never raise and never block long.

    ``record_exposure`` validates the exposure, then writes it through unless the database failed less
    than ``retry_after_s`` seconds ago; when it is unavailable (``UnavailableError``) the exposure goes to
    an in-memory queue of at most ``max_buffer`` entries, and an exposure arriving on a full queue is
    dropped and counted in ``lost``. The queue is written in batches of ``flush_batch`` (duplicates
    skipped, since a write cut by the outage may have committed) by a daemon thread every
    ``flush_interval_s`` seconds (``None``: no thread), by :meth:`flush`, and one batch after each
    successful direct write. Invalid or duplicate exposures are dropped and counted in ``rejected``.

    Counters (ints, cumulative since start unless said): ``buffered`` (exposures queued), ``flushed``
    (queued exposures now in the database), ``lost`` (dropped on overflow, or still queued at ``close``),
    ``rejected`` (invalid / duplicate), ``pending`` (queue length now). ``buffered == flushed + pending +
    lost_at_close``. Everything except exposures is delegated and may raise ``UnavailableError`` (503).
    """

    def __init__(
        self,
        inner: EventStore,
        max_buffer: int = 10_000,
        *,
        flush_interval_s: float | None = 1.0,
        retry_after_s: float = 1.0,
        flush_batch: int = 500,
    ) -> None:
        if max_buffer < 0 or flush_batch < 1:
            raise ValueError("max_buffer must be >= 0 and flush_batch >= 1")
        self.inner = inner
        self.max_buffer = max_buffer
        self.retry_after_s = retry_after_s
        self.flush_batch = flush_batch
        self._queue: deque[Exposure] = deque()
        self._queued_ids: set[str] = set()
        self._lock = threading.Lock()  # queue, ids, counters, circuit
        self._flush_lock = threading.Lock()  # one flusher at a time
        self._retry_at = 0.0  # time.monotonic() before which the database is not tried for exposures
        self.buffered = 0
        self.flushed = 0
        self.lost = 0
        self.rejected = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if flush_interval_s is not None:
            self._thread = threading.Thread(
                target=self._run, args=(flush_interval_s,), name="event-store-flush", daemon=True
            )
            self._thread.start()

    # ---- counters / state

    @property
    def pending(self) -> int:
        """Exposures waiting in the queue now."""
        with self._lock:
            return len(self._queue)

    def stats(self) -> dict[str, int]:
        """``buffered``, ``flushed``, ``lost``, ``rejected``, ``pending`` (see the class docstring)."""
        with self._lock:
            return {
                "buffered": self.buffered,
                "flushed": self.flushed,
                "lost": self.lost,
                "rejected": self.rejected,
                "pending": len(self._queue),
            }

    def _circuit_open(self) -> bool:
        return time.monotonic() < self._retry_at

    def _trip(self, exc: BaseException) -> None:
        with self._lock:
            first = self._retry_at == 0.0 or not self._circuit_open()
            self._retry_at = time.monotonic() + self.retry_after_s
        if first:
            log.warning("event_store.unavailable", error=str(exc), pending=self.pending)

    def _reset(self) -> None:
        self._retry_at = 0.0

    def _enqueue(self, exposures: Sequence[Exposure]) -> None:
        dropped = 0
        with self._lock:
            for e in exposures:
                if e.request_id in self._queued_ids:
                    self.rejected += 1
                elif len(self._queue) >= self.max_buffer:
                    self.lost += 1
                    dropped += 1
                else:
                    self._queue.append(e)
                    self._queued_ids.add(e.request_id)
                    self.buffered += 1
        if dropped:
            log.error("event_store.buffer_overflow", dropped=dropped, max_buffer=self.max_buffer)

    def _valid(self, e: Exposure) -> bool:
        try:
            validate_exposure(e)
            return True
        except ValidationError as exc:
            with self._lock:
                self.rejected += 1
            log.warning(
                "event_store.exposure_rejected", request_id=getattr(e, "request_id", None), error=exc.detail
            )
            return False

    # ---- exposures (never raise)

    def record_exposure(self, e: Exposure) -> None:
        """Write, queue or drop ``e`` (see the class docstring); never raises, blocks at most about the
        inner store's connect / busy timeout, and not at all while the database is known to be down."""
        if not self._valid(e):
            return
        if self._circuit_open():
            self._enqueue([e])
            return
        try:
            self.inner.record_exposure(e)
        except UnavailableError as exc:
            self._trip(exc)
            self._enqueue([e])
            return
        except AppsimError as exc:  # duplicate request id
            with self._lock:
                self.rejected += 1
            log.warning("event_store.exposure_rejected", request_id=e.request_id, error=exc.detail)
            return
        except Exception as exc:  # never fail the request because of the event store
            self._trip(exc)
            self._enqueue([e])
            return
        self._reset()
        if self._thread is None and self.pending:
            self._flush(max_batches=1, blocking=False)

    def record_exposures(self, exposures: Sequence[Exposure]) -> None:
        """Like :meth:`record_exposure` for a batch (one transaction when the database is up)."""
        valid = [e for e in exposures if self._valid(e)]
        if not valid:
            return
        batch = getattr(self.inner, "record_exposures", None)
        if batch is None or self._circuit_open():
            for e in valid:
                self.record_exposure(e)
            return
        try:
            batch(valid)
        except UnavailableError as exc:
            self._trip(exc)
            self._enqueue(valid)
        except AppsimError:  # a duplicate in the batch: nothing written, retry one by one
            for e in valid:
                self.record_exposure(e)
        except Exception as exc:
            self._trip(exc)
            self._enqueue(valid)
        else:
            self._reset()

    def flush(self) -> int:
        """Write the queue now, batch by batch, until it is empty or the database fails; returns the number
        of exposures taken off the queue into the database. Never raises."""
        return self._flush(max_batches=None, blocking=True)

    def _write_batch(self, batch: list[Exposure]) -> int:
        """Write ``batch``; returns how many of its first entries are done (written or already there)."""
        many = getattr(self.inner, "record_exposures", None)
        if many is not None:
            many(batch, ignore_duplicates=True)
            return len(batch)
        for done, e in enumerate(batch):
            try:
                self.inner.record_exposure(e)
            except ConflictError:
                pass  # already there: its first write committed
            except UnavailableError:
                if done:
                    return done
                raise
        return len(batch)

    def _flush(self, max_batches: int | None, blocking: bool) -> int:
        if not self._flush_lock.acquire(blocking=blocking):
            return 0
        total = 0
        try:
            batches = 0
            while max_batches is None or batches < max_batches:
                with self._lock:
                    batch = [self._queue[i] for i in range(min(self.flush_batch, len(self._queue)))]
                if not batch:
                    break
                try:
                    done = self._write_batch(batch)
                except Exception as exc:
                    self._trip(exc)
                    break
                with self._lock:
                    for _ in range(done):
                        self._queued_ids.discard(self._queue.popleft().request_id)
                    self.flushed += done
                total += done
                batches += 1
                self._reset()
                if done < len(batch):
                    break
        finally:
            self._flush_lock.release()
        if total:
            log.info("event_store.flushed", flushed=total, pending=self.pending)
        return total

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            if self.pending and not self._circuit_open():
                try:
                    self._flush(max_batches=None, blocking=False)
                except Exception:  # pragma: no cover - _flush does not raise; keep the thread alive
                    log.exception("event_store.flush_failed")

    # ---- delegated

    def record_outcome(self, o: Outcome) -> bool:
        """As the inner store; if the exposure ``o.request_id`` is still queued, the queue is flushed first
        and ``UnavailableError`` is raised when it cannot be (never a false ``NotFoundError``)."""
        with self._lock:
            queued = o.request_id in self._queued_ids
        if queued:
            self.flush()
            with self._lock:
                if o.request_id in self._queued_ids:
                    raise UnavailableError(
                        f"exposure {o.request_id!r} is buffered; the event store is unavailable, retry later"
                    )
        return self.inner.record_outcome(o)

    def record_outcomes(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """As the inner store's batch (all or nothing; one call per outcome, NOT atomic, when the inner store
        has no batch method). Exposures of the batch still queued are flushed first; ``UnavailableError``
        when they cannot be (never a false ``NotFoundError``)."""
        ids = {o.request_id for o in outcomes}
        with self._lock:
            queued = bool(ids & self._queued_ids)
        if queued:
            self.flush()
            with self._lock:
                still = sorted(ids & self._queued_ids)
            if still:
                raise UnavailableError(
                    f"exposures {still[:5]} are buffered; the event store is unavailable, retry later"
                )
        batch = getattr(self.inner, "record_outcomes", None)
        if batch is not None:
            return list(batch(outcomes))
        return [self.inner.record_outcome(o) for o in outcomes]

    def exposures(self, experiment_id: str) -> pd.DataFrame:
        """As the inner store, after trying to flush the queue (queued exposures are not in the result)."""
        if self.pending:
            self.flush()
        return self.inner.exposures(experiment_id)

    def outcomes(self, experiment_id: str) -> pd.DataFrame:
        return self.inner.outcomes(experiment_id)

    def record_audit(self, actor: str, action: str, payload: dict) -> None:
        self.inner.record_audit(actor, action, payload)

    def audit_log(self, limit: int = 100) -> list[dict]:
        return self.inner.audit_log(limit)

    def health(self) -> bool:
        """The inner store's health (False while the database is unreachable); never raises."""
        health = getattr(self.inner, "health", None)
        try:
            return bool(health()) if health is not None else True
        except Exception:
            return False

    def close(self, flush_timeout_s: float = 5.0) -> None:
        """Stop the flush thread, try a last flush, count what is still queued as ``lost``, close the inner
        store. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=flush_timeout_s)
            self._thread = None
        if self.pending:
            self._reset()
            self.flush()
        with self._lock:
            left = len(self._queue)
            self.lost += left
            self._queue.clear()
            self._queued_ids.clear()
        if left:
            log.error("event_store.lost_on_close", lost=left)
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> BufferedEventStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def make_event_store(
    url: str | sa.URL | None = None,
    *,
    buffered: bool = False,
    max_buffer: int = 10_000,
    **kwargs: Any,
) -> SQLAlchemyEventStore | BufferedEventStore:
    """The event store for ``url`` (default :data:`DEFAULT_URL`); ``kwargs`` go to
    :class:`SQLAlchemyEventStore`. ``buffered=True`` wraps it in a :class:`BufferedEventStore`.
    Raises ``ValidationError`` (unsupported URL) or ``UnavailableError`` (database unreachable at start)."""
    store = SQLAlchemyEventStore(url or DEFAULT_URL, **kwargs)
    return BufferedEventStore(store, max_buffer=max_buffer) if buffered else store
