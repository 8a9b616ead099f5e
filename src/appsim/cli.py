"""The command line (typer): ``appsim serve``, ``appsim similar``, ``appsim data ...``, ``appsim ab ...``,
``appsim evaluate``."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="appsim: similar apps, performance prediction and v1/v2 A/B testing.", no_args_is_help=True)
data_app = typer.Typer(help="Build, generate and import catalogues.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()

REPO_RAW = Path("data/raw/apple-appstore")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="bind address (0.0.0.0 in containers)"),
    port: int = typer.Option(8000, help="TCP port"),
    workers: int = typer.Option(1, min=1, help="worker processes (metrics aggregate across them)"),
    log_level: str = typer.Option("warning", help="uvicorn's own log level; appsim logs JSON lines"),
) -> None:
    """Serve the REST API (uvicorn). SIGTERM drains requests in flight (graceful shutdown, 30 s)."""
    import uvicorn

    from appsim.config.settings import ConfigError, load_settings

    try:
        load_settings()  # fail fast, naming the bad key, before any worker starts
    except ConfigError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="appsim-prom-")
    uvicorn.run(
        "appsim.app:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        timeout_graceful_shutdown=30,
        access_log=False,
    )


@app.command()
def similar(
    app_id: Annotated[str | None, typer.Option(help="a catalogue app id")] = None,
    name: Annotated[str | None, typer.Option(help="a NEW app's name (cold start)")] = None,
    category: Annotated[str | None, typer.Option(help="its category / genre")] = None,
    description: Annotated[str | None, typer.Option(help="its description")] = None,
    platform: Annotated[str | None, typer.Option(help="its platform")] = None,
    model_version: Annotated[str, typer.Option("--model-version", "-m")] = "v2",
    top_k: Annotated[int, typer.Option("--top-k", "-k")] = 10,
    filter_category: Annotated[str | None, typer.Option(help="only apps of this category")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Print the most similar catalogue apps for a known app id or a new app's metadata."""
    from threadpoolctl import threadpool_limits

    from appsim.app import load_version
    from appsim.config.settings import load_settings
    from appsim.domain import AppMetadata
    from appsim.errors import AppsimError
    from appsim.services.similarity import Filters, Query, SimilarityService

    settings = load_settings()
    if (app_id is None) == (name is None):
        console.print("[red]give exactly one of --app-id or --name (with --category/--description)[/red]")
        raise typer.Exit(2)
    try:
        with threadpool_limits(limits=settings.threads.blas):
            if model_version not in settings.model_versions:
                known = ", ".join(sorted(settings.model_versions))
                raise typer.BadParameter(f"unknown model version {model_version!r}; known: {known}")
            svc = SimilarityService({model_version: load_version(settings, model_version)},
                                    max_top_k=settings.search.max_top_k)
            q = Query(app_id=app_id) if app_id else Query(
                app=AppMetadata(name=name or "", category=category, platform=platform, description=description))
            filters = Filters(category=(filter_category,)) if filter_category else None
            res = svc.find_similar(model_version, q, top_k, filters)
    except AppsimError as e:
        console.print(f"[red]{type(e).__name__}: {e.detail}[/red]")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps([n.to_dict() for n in res.neighbours], ensure_ascii=False, indent=2))
        return
    table = Table(title=f"top-{res.top_k} similar apps ({model_version}, cosine similarity)")
    for col in ("rank", "app_id", "name", "category", "score"):
        table.add_column(col, justify="right" if col in ("rank", "score") else "left")
    for n in res.neighbours:
        table.add_row(str(n.rank), n.app_id, n.name, n.category, f"{n.score:.4f}")
    console.print(table)


@data_app.command("build")
def data_build(
    raw_dir: Path = typer.Option(REPO_RAW, help="the raw App Store files (see data/raw/SOURCE.txt)"),
    out: Path = typer.Option(Path("artifacts/real"), help="real catalogue output directory"),
    mock_out: Path = typer.Option(Path("artifacts/mock"), help="mock company catalogue output directory"),
    force: bool = typer.Option(False, help="rebuild even when inputs are unchanged"),
    progress: bool = typer.Option(True, help="progress bar while encoding"),
) -> None:
    """Build every catalogue idempotently (a second run changes no byte)."""
    from threadpoolctl import threadpool_limits

    from appsim.data.build import build_mock, build_real

    with threadpool_limits(limits=os.cpu_count() or 1):
        summary = build_real(raw_dir, out, force=force, progress=progress)
        build_mock(mock_out)
    console.print_json(data=summary)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
