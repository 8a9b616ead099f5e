"""create_app(settings): the one place that wires appsim together.

Everything the routes use is built here and hung on ``app.state.container``; nothing reaches for a
global. Model versions load in a background thread at start-up: ``GET /health/ready`` answers 503 until
every configured version has loaded (a version that fails its checks stops readiness with the error that
names the file and the check; a half-loaded version is never served).
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI
from threadpoolctl import threadpool_limits

from appsim import __version__
from appsim.api.drift_routes import install_drift
from appsim.api.errors import install_error_handlers
from appsim.api.middleware import RequestContextMiddleware
from appsim.config.settings import Settings, load_settings
from appsim.data.catalogue import load_model_version, read_apps
from appsim.errors import AppsimError, DataError, UnavailableError
from appsim.observability import MODELS_LOADED, configure_logging
from appsim.services.similarity import ModelVersion, SimilarityService

log = structlog.get_logger("appsim.app")


@dataclass
class Container:
    """The service's dependencies. ``similarity`` is None until the model versions have loaded."""

    settings: Settings
    similarity: SimilarityService | None = None
    ready: bool = False
    load_error: str | None = None
    started_at: float = field(default_factory=time.time)
    load_seconds: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def require_similarity(self) -> SimilarityService:
        if self.similarity is None or not self.ready:
            raise UnavailableError(self.load_error or "model versions are still loading; retry shortly")
        return self.similarity


def _index_factory(settings: Settings, version: str, size: int) -> Any:
    from appsim.backends.index import ExactIndex

    cfg = settings.model_versions[version].index
    backend = cfg.backend
    if backend == "auto":
        backend = "hnsw" if size >= cfg.auto_threshold else "exact"
    if backend == "hnsw":
        try:
            from appsim.backends.ann import make_hnsw_factory
        except ImportError as e:  # pragma: no cover - the ANN backend ships with the package
            raise AppsimError(f"hnsw backend unavailable: {e}") from e
        return make_hnsw_factory(cfg, threads=settings.threads.blas)  # OpenMP threads per search call
    return ExactIndex


def load_version(settings: Settings, version: str, apps: Any = None) -> ModelVersion:
    """Load one configured version from ``catalogue_dir`` (raises ArtifactError on any failed check).
    ``apps``: the catalogue metadata if already read (read once for all versions at start-up)."""
    root = Path(settings.catalogue_dir)
    apps = read_apps(root) if apps is None else apps
    cfg = settings.model_versions[version]
    from appsim.data.artifacts import load_version_artifact

    size = int(load_version_artifact(root / cfg.path, verify=False).vectors.shape[0])
    factory = _index_factory(settings, version, size)
    return load_model_version(root, version, apps=apps, subdir=cfg.path, index_factory=factory)


def load_all(container: Container, *, after_ready_in_background: bool = True) -> None:
    """Load every configured version, run the ``on_loaded`` hooks, mark ready, then run the
    ``after_ready`` hooks (monitoring references: they never delay readiness) in a background thread."""
    s = container.settings
    t0 = time.perf_counter()
    try:
        with threadpool_limits(limits=s.threads.blas):
            apps = read_apps(Path(s.catalogue_dir))
            container.extras["apps"] = apps
            versions = {name: load_version(s, name, apps) for name in s.model_versions}
        container.similarity = SimilarityService(
            versions, default_top_k=s.search.default_top_k, max_top_k=s.search.max_top_k
        )
        for name, mv in versions.items():
            MODELS_LOADED.labels(name).set(mv.size)
        for hook in container.extras.get("on_loaded", []):
            hook(container)
        container.load_seconds = time.perf_counter() - t0
        container.ready = True
        after = container.extras.get("after_ready", [])
        if after_ready_in_background:
            threading.Thread(
                target=_run_hooks, args=(after, container), name="appsim-after-ready", daemon=True
            ).start()
        else:
            _run_hooks(after, container)
        log.info(
            "model versions loaded",
            versions={n: {"count": v.size, "dim": v.dim} for n, v in versions.items()},
            seconds=round(container.load_seconds, 3),
        )
    except Exception as e:
        check = f" [check: {e.check}]" if isinstance(e, DataError) and e.check else ""
        container.load_error = f"{type(e).__name__}: {e}{check}"
        log.error("model versions failed to load", error=container.load_error)


def _run_hooks(hooks: list[Any], container: Container) -> None:
    for hook in hooks:
        try:
            with threadpool_limits(limits=container.settings.threads.blas):
                hook(container)
        except Exception as e:
            log.error(
                "after_ready hook failed",
                hook=getattr(hook, "__qualname__", str(hook)),
                error=f"{type(e).__name__}: {e}",
            )


def create_app(settings: Settings | None = None, *, load_in_background: bool = True) -> FastAPI:
    """Build the FastAPI app. ``load_in_background=False`` loads synchronously (tests, CLI)."""
    s = settings or load_settings()
    configure_logging(s.logging.level, s.logging.json_logs)
    container = Container(settings=s)
    if s.search.cache_size > 0:  # LRU of repeated similarity queries (appsim.services.cache)
        from appsim.services.cache import SimilarityCache

        container.extras["cache"] = SimilarityCache(s.search.cache_size)
        container.extras["search"] = container.extras["cache"].search

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # bound BLAS/OpenMP threads in this worker (one per worker by default), and the threads that run
        # CPU-bound routes off the event loop
        threadpool_limits(limits=s.threads.blas)
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = s.threads.search_workers
        if load_in_background:
            threading.Thread(target=load_all, args=(container,), name="appsim-loader", daemon=True).start()
        for hook in container.extras.get("on_startup", []):
            hook(container)
        yield
        for hook in container.extras.get("on_shutdown", []):
            hook(container)

    app = FastAPI(
        title="appsim",
        version=__version__,
        description=(
            "Find the most similar known apps for a new mobile app (cosine similarity over v1/v2 "
            "embeddings), predict its campaign performance, and A/B test v1 against v2."
        ),
        lifespan=lifespan,
    )
    app.state.container = container
    install_error_handlers(app)
    from appsim.api.endpoints import router

    app.include_router(router)
    from appsim.api.predict_routes import load_prediction
    from appsim.api.predict_routes import router as predict_router

    container.extras.setdefault("on_loaded", []).append(load_prediction)  # HistoryStats, built once
    app.include_router(predict_router)  # POST /predict
    install_drift(app, container)  # GET /drift + drift hooks (after_ready, after_request, on_reloaded)
    from appsim.api.ab_routes import router as ab_router
    from appsim.api.ab_wiring import install_ab

    install_ab(container)  # event store + A/B controller: extras["ab"], exposure hook, close on shutdown
    app.include_router(ab_router)  # /feedback, /experiments, /experiments/{id}[/weights|/audit]
    from appsim.api.admin_routes import router as admin_router

    app.include_router(admin_router)  # POST /admin/reload/{model_version} (X-API-Key: api.security)
    # every documented path (routers are nested, so app.routes alone does not list them): requests that
    # fail before routing (413, invalid JSON) are still labelled with their endpoint in metrics and logs
    known = set(app.openapi().get("paths", {}))
    app.add_middleware(RequestContextMiddleware, max_body_bytes=s.limits.max_body_bytes, known_routes=known)
    if not load_in_background:
        load_all(container, after_ready_in_background=False)
    return app


def app_factory() -> FastAPI:
    """Factory for ``uvicorn appsim.app:app_factory --factory`` (each worker builds its own app)."""
    return create_app()
