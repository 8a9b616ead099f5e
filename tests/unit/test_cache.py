"""SimilarityCache: results identical to the uncached service, hits/misses (instance and Prometheus), the LRU
bound, key separation, errors never cached, invalidation on reload and by clear(version), app wiring."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from appsim.backends.ann import clustered_vectors
from appsim.backends.index import ExactIndex
from appsim.domain import AppMetadata
from appsim.errors import NotFoundError, UnknownModelVersionError, ValidationError
from appsim.services.cache import SimilarityCache
from appsim.services.similarity import Filters, ModelVersion, Query, SimilarityService

CATS = np.array(["Games", "Finance", "Health & Fitness"], dtype=object)


class HashEncoder:
    """Deterministic fake encoder: the text's sha256 seeds a random unit vector."""

    kind = "hash"

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.calls = 0

    def encode(self, apps: Sequence[AppMetadata]) -> np.ndarray:
        self.calls += 1
        out = []
        for a in apps:
            text = f"{a.name}|{a.category}|{a.description}".encode()
            seed = int.from_bytes(hashlib.sha256(text).digest()[:8])
            v = np.random.default_rng(seed).standard_normal(self.dim)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


def make_version(name: str = "v1", n: int = 400, d: int = 16, seed: int = 0) -> ModelVersion:
    x = clustered_vectors(n, d, seed=seed, n_clusters=6)
    rng = np.random.default_rng(seed)
    mv = ModelVersion(
        name=name,
        ids=np.array([f"app{i:04d}" for i in range(n)], dtype=object),
        vectors=x,
        names=np.array([f"App {i}" for i in range(n)], dtype=object),
        categories=CATS[rng.integers(0, 3, n)],
        platforms=np.array(["ios"] * n, dtype=object),
        index=ExactIndex(x),
        encoder=HashEncoder(d),
        manifest={"vectors_sha256": hashlib.sha256(x.tobytes()).hexdigest()},
    )
    mv.index = ExactIndex(x, mv.tiebreak)
    return mv


def same(a, b) -> bool:  # type: ignore[no-untyped-def]
    return (
        [n.to_dict() for n in a.neighbours] == [n.to_dict() for n in b.neighbours]
        and (a.model_version, a.query_kind, a.top_k, a.candidates, a.encoding)
        == (b.model_version, b.query_kind, b.top_k, b.candidates, b.encoding)
    )


def prom(name: str, version: str) -> float:
    return REGISTRY.get_sample_value(f"appsim_cache_{name}_total", {"model_version": version}) or 0.0


@pytest.fixture
def sim() -> SimilarityService:
    return SimilarityService({"v1": make_version("v1"), "v2": make_version("v2", d=24, seed=1)})


BUDGET = AppMetadata("Budget Buddy", "Finance", "ios", "Track spending")
QUERIES = [
    (Query(app_id="app0007"), None, None),
    (Query(app_id="app0007"), 25, None),
    (Query(app_id="app0007"), 5, Filters(category=("games",))),
    (Query(app_id="app0123"), 10, Filters(category=("Finance", "Games"))),
    (Query(vector=[0.1] * 16), 7, None),
    (Query(vector=np.linspace(-1, 1, 16)), 3, Filters(category=("Health & Fitness",))),
    (Query(app=BUDGET), 10, None),
    (Query(app=BUDGET), 10, Filters(platform=("IOS",))),
]


def test_results_identical_to_uncached_and_counted(sim: SimilarityService) -> None:
    cache = SimilarityCache(100)
    h0, m0 = prom("hits", "v1"), prom("misses", "v1")
    for q, k, f in QUERIES:
        want = sim.find_similar("v1", q, k, f)
        first = cache.search(sim, "v1", q, k, f)
        second = cache.search(sim, "v1", q, k, f)
        assert same(first, want) and same(second, want)
        assert second is first  # served from the cache
    assert (cache.hits, cache.misses) == (len(QUERIES), len(QUERIES))
    assert prom("hits", "v1") - h0 == len(QUERIES) and prom("misses", "v1") - m0 == len(QUERIES)
    assert len(cache) == len(QUERIES)


def test_metadata_query_is_encoded_once(sim: SimilarityService) -> None:
    cache = SimilarityCache(10)
    enc = sim.version("v1").encoder
    assert isinstance(enc, HashEncoder)
    q = Query(app=AppMetadata("Sleep Sounds", "Health & Fitness", None, "rain and ocean"))
    for _ in range(5):
        cache.search(sim, "v1", q, 10)
    assert enc.calls == 1
    # a different description is a different key (strings are hashed exactly)
    q2 = Query(app=AppMetadata("Sleep Sounds", "Health & Fitness", None, "rain  and ocean"))
    cache.search(sim, "v1", q2, 10)
    assert enc.calls == 2


def test_keys_separate_version_k_filters_and_kind(sim: SimilarityService) -> None:
    cache = SimilarityCache(100)
    cache.search(sim, "v1", Query(app_id="app0001"), 10)
    cache.search(sim, "v2", Query(app_id="app0001"), 10)  # other version
    cache.search(sim, "v1", Query(app_id="app0001"), 11)  # other k
    cache.search(sim, "v1", Query(app_id="app0001"), 10, Filters(category=("Games",)))  # other filters
    cache.search(sim, "v1", Query(vector=np.asarray(sim.version("v1").vectors[1], dtype=np.float64)), 10)
    assert cache.misses == 5 and cache.hits == 0
    # equivalent spellings share a key: default k, filter case and order, empty filters
    cache.search(sim, "v1", Query(app_id="app0001"), None)
    cache.search(sim, "v1", Query(app_id="app0001"), 10, Filters())
    cache.search(sim, "v1", Query(app_id="app0001"), 10, Filters(category=("GAMES",)))
    assert cache.hits == 3


def test_lru_bound_and_eviction_order(sim: SimilarityService) -> None:
    cache = SimilarityCache(3)
    for i in range(3):
        cache.search(sim, "v1", Query(app_id=f"app{i:04d}"), 5)
    cache.search(sim, "v1", Query(app_id="app0000"), 5)  # refresh app0000: app0001 is now the oldest
    cache.search(sim, "v1", Query(app_id="app0009"), 5)  # evicts app0001
    assert len(cache) == 3
    hits = cache.hits
    cache.search(sim, "v1", Query(app_id="app0000"), 5)
    assert cache.hits == hits + 1
    cache.search(sim, "v1", Query(app_id="app0001"), 5)
    assert cache.hits == hits + 1  # a miss: it was evicted
    for i in range(50):
        cache.search(sim, "v1", Query(app_id=f"app{i:04d}"), 5)
    assert len(cache) == 3
    with pytest.raises(ValueError):
        SimilarityCache(0)


def test_errors_are_raised_every_time_and_never_cached(sim: SimilarityService) -> None:
    cache = SimilarityCache(10)
    for _ in range(2):
        with pytest.raises(NotFoundError):
            cache.search(sim, "v1", Query(app_id="nope"), 5)
        with pytest.raises(ValidationError):
            cache.search(sim, "v1", Query(app_id="app0001"), 5, Filters(category=("Unknown",)))
        with pytest.raises(ValidationError):
            cache.search(sim, "v1", Query(app_id="app0001"), 0)
        with pytest.raises(UnknownModelVersionError):
            cache.search(sim, "v9", Query(app_id="app0001"), 5)
    assert len(cache) == 0 and cache.hits == 0


def test_reload_invalidates_and_clear_drops_one_version(sim: SimilarityService) -> None:
    cache = SimilarityCache(100)
    q = Query(app_id="app0042")
    old = cache.search(sim, "v1", q, 10)
    cache.search(sim, "v2", q, 10)
    # reload v1 with other vectors (same ids): a new vectors_sha256 in its manifest
    sim.replace_version(make_version("v1", seed=99))
    new = cache.search(sim, "v1", q, 10)
    assert new is not old and same(new, sim.find_similar("v1", q, 10))
    assert not same(new, old)
    assert cache.search(sim, "v1", q, 10) is new
    # explicit invalidation of one version
    assert cache.clear("v1") == 2  # the stale and the fresh v1 entries
    assert len(cache) == 1
    h = cache.hits
    cache.search(sim, "v2", q, 10)
    assert cache.hits == h + 1
    assert cache.clear() == 1 and len(cache) == 0


def test_thread_safe_under_concurrent_use(sim: SimilarityService) -> None:
    cache = SimilarityCache(16)
    ids = [f"app{i:04d}" for i in range(40)]
    want = {a: sim.find_similar("v1", Query(app_id=a), 5) for a in ids}

    def work(i: int) -> bool:
        a = ids[i % len(ids)]
        return same(cache.search(sim, "v1", Query(app_id=a), 5), want[a])

    with ThreadPoolExecutor(8) as ex:
        assert all(ex.map(work, range(2000)))
    assert len(cache) <= 16 and cache.hits + cache.misses == 2000


def test_create_app_installs_the_cache(real_dir: Path, settings_factory) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from appsim.app import create_app
    from appsim.config.settings import ModelVersionConfig

    s = settings_factory(default_model_version="v1", experiments=[], search={"cache_size": 8})
    s.model_versions = {"v1": ModelVersionConfig(path="v1")}
    app = create_app(s, load_in_background=False)
    container = app.state.container
    cache = container.extras["cache"]
    assert isinstance(cache, SimilarityCache) and cache.max_entries == 8
    with TestClient(app) as c:
        h0 = prom("hits", "v1")
        bodies = [c.post("/find-similar", json={"app_id": "284882215", "top_k": 5}).json() for _ in range(3)]
        assert [b["results"] for b in bodies[1:]] == [bodies[0]["results"]] * 2
        assert prom("hits", "v1") - h0 == 2 and cache.misses == 1
        assert "appsim_cache_hits_total" in c.get("/metrics").text

    s0 = settings_factory(default_model_version="v1", experiments=[], search={"cache_size": 0})
    s0.model_versions = {"v1": ModelVersionConfig(path="v1")}
    extras = create_app(s0, load_in_background=False).state.container.extras
    assert "search" not in extras and "cache" not in extras
