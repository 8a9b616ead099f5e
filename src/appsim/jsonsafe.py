"""One JSON-safety rule for every response, report and log payload: numpy scalars and arrays become Python
numbers and lists, tuples become lists, datetimes ISO 8601 strings in UTC, and non-finite floats (NaN, inf)
become ``None`` — no response ever carries NaN."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np


def jsonable(obj: Any) -> Any:
    """Recursively convert ``obj`` (dicts, lists, tuples, numpy values, datetimes) to JSON types; NaN and
    infinities become ``None``; keys become strings; other values are returned unchanged."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, datetime):
        ts = obj if obj.tzinfo is not None else obj.replace(tzinfo=UTC)
        return ts.astimezone(UTC).isoformat()
    return obj
