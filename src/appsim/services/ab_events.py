"""Event records of the A/B experiments and the store interface they go through.

The experimentation core (:mod:`appsim.services.ab_testing`) only talks to an :class:`EventStore`; the
SQLite / PostgreSQL implementation lives in :mod:`appsim.backends.event_store` and imports these types
from here. Timestamps are timezone-aware UTC ``datetime`` objects; latency is in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

import pandas as pd

OutcomeKind = Literal["impression", "click", "install", "revenue"]
OUTCOME_KINDS: tuple[str, ...] = ("impression", "click", "install", "revenue")

EXPOSURE_COLUMNS: tuple[str, ...] = (
    "request_id",
    "experiment_id",
    "unit_id",
    "variant",
    "model_version",
    "endpoint",
    "latency_ms",
    "error",
    "forced",
    "ts",
)
OUTCOME_COLUMNS: tuple[str, ...] = (
    "event_id",
    "request_id",
    "kind",
    "value",
    "ts",
    "variant",
    "unit_id",
    "forced",
)


@dataclass
class Exposure:
    """One served request that belongs to an experiment (one row per ``request_id``).

    ``latency_ms`` is the server-side latency of the request in milliseconds; ``error`` is ``None`` for a
    successful request, else a short error code. ``forced`` marks QA / override exposures, which are kept
    (outcomes of those requests must still be accepted) but excluded from every analysis.
    """

    request_id: str
    experiment_id: str
    unit_id: str
    variant: str
    model_version: str
    endpoint: str
    latency_ms: float
    error: str | None
    forced: bool
    ts: datetime


@dataclass
class Outcome:
    """A downstream event attributed to a request: an impression, click, install or revenue (``value``).

    ``event_id`` is the client's idempotency key. ``value`` is 1.0 for counting events and the amount for
    ``revenue`` (currency units of the company's reporting currency).
    """

    event_id: str
    request_id: str
    kind: OutcomeKind
    value: float
    ts: datetime


@runtime_checkable
class EventStore(Protocol):
    """Persistence of exposures, outcomes and the admin audit log.

    * ``record_outcome`` returns ``False`` when ``event_id`` was already recorded (idempotent) and raises
      :class:`appsim.errors.NotFoundError` when ``request_id`` has no recorded exposure.
    * ``exposures(experiment_id)`` returns a DataFrame with the columns :data:`EXPOSURE_COLUMNS`.
    * ``outcomes(experiment_id)`` returns a DataFrame with the columns :data:`OUTCOME_COLUMNS` (the
      outcome joined with its exposure's ``variant``, ``unit_id`` and ``forced``).
    * ``audit_log(limit)`` returns the latest ``limit`` entries as dicts with at least the keys
      ``actor``, ``action`` and ``payload`` (the dict given to ``record_audit``).
    """

    def record_exposure(self, e: Exposure) -> None: ...

    def record_outcome(self, o: Outcome) -> bool: ...

    def exposures(self, experiment_id: str) -> pd.DataFrame: ...

    def outcomes(self, experiment_id: str) -> pd.DataFrame: ...

    def record_audit(self, actor: str, action: str, payload: dict) -> None: ...

    def audit_log(self, limit: int = 100) -> list[dict]: ...
