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

from appsim.cli_ab import ab_app

app = typer.Typer(
    help="appsim: similar apps, performance prediction and v1/v2 A/B testing.", no_args_is_help=True
)
data_app = typer.Typer(help="Build, generate and import catalogues.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(ab_app, name="ab")
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
    # uvicorn drains in-flight requests on SIGTERM, then re-raises the signal once it has restored the
    # previous handler: exit 0 for that clean drain, so restart policies do not count it as a crash
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
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
            svc = SimilarityService(
                {model_version: load_version(settings, model_version)}, max_top_k=settings.search.max_top_k
            )
            q = (
                Query(app_id=app_id)
                if app_id
                else Query(
                    app=AppMetadata(
                        name=name or "", category=category, platform=platform, description=description
                    )
                )
            )
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


@data_app.command("mock")
def data_mock(
    apps: int = typer.Option(2000, "--apps", min=10, help="number of apps"),
    seed: int = typer.Option(7, help="random seed (same seed, same bytes)"),
    out: Path = typer.Option(Path("data/mock-company"), help="output directory for the five files"),
) -> None:
    """Write the company's five-file format with planted structure (see docs/company-format.md)."""
    from appsim.data.mock import generate_mock

    console.print_json(data=generate_mock(apps, seed, out))


@data_app.command("import")
def data_import(
    src: Path = typer.Argument(
        ...,
        help="folder with mock_embeddings_v1.pkl, mock_embeddings_v2.pkl, "
        "sample_apps.csv, historical_performance.csv",
    ),
    out: Path = typer.Option(Path("artifacts/company"), help="catalogue output directory"),
    strict: bool = typer.Option(False, help="fail on NaN/zero/duplicate vectors instead of dropping them"),
) -> None:
    """Validate the company's files (restricted unpickler) and convert them once into memory-mappable
    artifacts; prints the validation report. Serve them with APPSIM_CATALOGUE_DIR=<out>."""
    from appsim.data.company import import_company
    from appsim.errors import DataError

    try:
        report = import_company(src, out, strict=strict)
    except DataError as e:
        console.print(f"[red]{type(e).__name__}: {e.detail}[/red]")
        raise typer.Exit(1) from None
    console.print_json(data=report)


@app.command()
def evaluate(
    real_dir: Path = typer.Option(Path("artifacts/real"), help="real catalogue built by `appsim data build`"),
    mock_dir: Path = typer.Option(Path("artifacts/mock"), help="mock catalogue (built on the fly if absent)"),
    out_md: Path = typer.Option(Path("docs/evaluation.md"), help="markdown report"),
    out_png: Path = typer.Option(Path("docs/evaluation.png"), help="figure"),
    resamples: int = typer.Option(2000, min=100, help="bootstrap resamples"),
    seed: int = typer.Option(20261129, help="bootstrap seed"),
) -> None:
    """Offline evaluation of v1 vs v2 on held-out apps: genre precision@10 vs chance, real-outcome and
    (SIMULATED) campaign-rate errors vs a category-mean baseline, bootstrap CIs -> docs/evaluation.md/.png."""
    import shlex
    import sys

    from appsim.services.evaluation import evaluate as run_evaluation
    from appsim.services.evaluation import write_report

    results = run_evaluation(real_dir, mock_dir, resamples=resamples, seed=seed, log=console.print)
    write_report(results, out_md, out_png, command="appsim " + shlex.join(sys.argv[1:]))
    for line in results["verdict"]["outcome_statements"]:
        console.print(f"* {line}")
    verdict, seconds = results["verdict"]["winner"], results["meta"]["seconds"]
    console.print(f"[bold]{verdict}[/bold] ({seconds} s); wrote {out_md} and {out_png}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
