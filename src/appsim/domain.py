"""Core value types and the small interfaces the pure services depend on.

Every vector crossing these interfaces is ``(m, d) float32``, L2-normalised row by row, so that the
inner product is the cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class AppMetadata:
    """A (possibly new) app's metadata, the input of cold-start encoding.

    ``category`` is the store genre (App Store ``prime_genre``) or the company's ``super_category``;
    ``platform`` is ``ios`` / ``android`` / ... as in the catalogue.
    """

    name: str
    category: str | None = None
    platform: str | None = None
    description: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Encoder(Protocol):
    """Turns app metadata into embeddings of one model version.

    ``encode`` returns ``(len(apps), dim) float32``, L2-normalised rows.
    """

    kind: str
    dim: int

    def encode(self, apps: Sequence[AppMetadata]) -> np.ndarray: ...


@runtime_checkable
class IndexBackend(Protocol):
    """Top-k search by inner product over ``(size, dim) float32`` L2-normalised rows.

    ``search(queries (m, dim) float32 L2-normalised, k, allowed)`` returns ``(scores, rows)``, both
    ``(m, k')`` with ``k' = min(k, number of allowed rows)``; ``scores`` float32 cosine similarities in
    descending order, ``rows`` int64 row numbers into the catalogue. ``allowed`` is an optional ``(size,)``
    bool mask applied *before* ranking (filters). Ties are broken by the caller (score desc, app_id asc),
    so a backend returns every row tied with the k-th score when ``return_ties`` is set.
    """

    name: str
    dim: int
    size: int

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...
