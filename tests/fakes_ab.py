"""A tiny in-memory :class:`appsim.services.ab_events.EventStore` for the A/B unit tests.

Same contract as the real store: ``record_outcome`` is idempotent on ``event_id`` (returns ``False`` on a
repeat) and raises ``NotFoundError`` for an unknown ``request_id``; the frames have the documented columns;
``audit_log`` is newest first.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd

from appsim.errors import NotFoundError
from appsim.services.ab_events import EXPOSURE_COLUMNS, OUTCOME_COLUMNS, EventStore, Exposure, Outcome


class InMemoryEventStore:
    def __init__(self) -> None:
        self._exposures: dict[str, Exposure] = {}
        self._rows: dict[str, tuple] = {}
        self._outcomes: dict[str, Outcome] = {}
        self._audit: list[dict[str, Any]] = []

    def record_exposure(self, e: Exposure) -> None:
        if e.request_id not in self._exposures:
            self._exposures[e.request_id] = e
            self._rows[e.request_id] = tuple(getattr(e, c) for c in EXPOSURE_COLUMNS)

    def record_outcome(self, o: Outcome) -> bool:
        if o.event_id in self._outcomes:
            return False
        if o.request_id not in self._exposures:
            raise NotFoundError(f"no exposure recorded for request_id {o.request_id!r}", field="request_id")
        self._outcomes[o.event_id] = o
        return True

    def exposures(self, experiment_id: str) -> pd.DataFrame:
        rows = [r for r in self._rows.values() if r[1] == experiment_id]
        df = pd.DataFrame.from_records(rows, columns=list(EXPOSURE_COLUMNS))
        df["ts"] = pd.to_datetime(df["ts"], utc=True)
        return df

    def outcomes(self, experiment_id: str) -> pd.DataFrame:
        rows = []
        for o in self._outcomes.values():
            e = self._exposures[o.request_id]
            if e.experiment_id == experiment_id:
                rows.append((o.event_id, o.request_id, o.kind, o.value, o.ts, e.variant, e.unit_id, e.forced))
        df = pd.DataFrame.from_records(rows, columns=list(OUTCOME_COLUMNS))
        df["ts"] = pd.to_datetime(df["ts"], utc=True)
        return df

    def record_audit(self, actor: str, action: str, payload: dict) -> None:
        entry = {"id": len(self._audit) + 1, "ts": datetime.now(UTC), "actor": actor, "action": action}
        self._audit.append({**entry, "payload": dict(payload)})

    def audit_log(self, limit: int = 100) -> list[dict]:
        return list(reversed(self._audit))[:limit]


_: EventStore = InMemoryEventStore()  # static check that the fake satisfies the protocol
