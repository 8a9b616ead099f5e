"""``appsim ab ...``: A/B tooling on the command line.

``appsim ab simulate`` drives simulated traffic with a planted effect through the REAL
:class:`~appsim.services.ab_testing.ABTestController` and a REAL event store (a SQLite file in a temporary
folder unless ``--store`` names one), prints the decision trajectory (one row per look) and saves the plot.
See :func:`appsim.services.ab_simulation.simulate` for the traffic model. Events are written in bulk, one
transaction per look (``WriteBehindStore``): 14 days x 2,000 requests/day take a few seconds.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

ab_app = typer.Typer(help="A/B testing tools: simulate an experiment end to end.", no_args_is_help=True)
console = Console()
_STATUS = {"pass": "pass", "fail": "FAIL", "inconclusive": "inc", "insufficient_data": "n/a"}


def _p(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def trajectory_table(trajectory: list[dict[str, Any]], control: str, treatment: str, title: str) -> Table:
    """A rich table of the per-look trajectory (exposures, rates, p-values, SRM, guardrails, decision)."""
    table = Table(title=title)
    for col, justify in (
        ("look", "right"),
        ("day", "right"),
        (f"n {control}", "right"),
        (f"n {treatment}", "right"),
        (f"rate {control}", "right"),
        (f"rate {treatment}", "right"),
        ("z p", "right"),
        ("mSPRT p now", "right"),
        ("mSPRT p min", "right"),
        ("SRM p", "right"),
        ("guardrails", "left"),
        ("decision", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for p in trajectory:
        guards = " ".join(
            f"{m.replace('latency_', '').replace('error_rate', 'err')}:{_STATUS.get(s, s)}"
            for m, s in p["guardrails"].get(treatment, {}).items()
        )
        decision = p["decision"]
        style = {"ship": "green", "stop": "red", "invalid": "magenta"}.get(decision.split(":")[0], "")
        table.add_row(
            str(p["look"]),
            f"{p['day']:.2f}",
            str(p["exposures"][control]),
            str(p["exposures"][treatment]),
            _rate(p["rate"][control]),
            _rate(p["rate"][treatment]),
            _p(p["p_z"].get(treatment)),
            _p(p["p_msprt_now"].get(treatment)),
            _p(p["p_msprt"].get(treatment)),
            _p(p["srm_p"]),
            guards,
            f"[{style}]{decision}[/{style}]" if style else decision,
        )
    return table


@ab_app.command("simulate")
def simulate_cmd(
    lift: float = typer.Option(0.10, help="relative install-rate lift of the treatment (0.10 = +10%)"),
    days: int = typer.Option(14, min=1, help="simulated days"),
    traffic_per_day: int = typer.Option(2000, min=1, help="requests per day (all in the experiment)"),
    split: float = typer.Option(0.7, min=0.01, max=0.99, help="control share (v1); v2 gets the rest"),
    base_rate: float = typer.Option(0.10, help="control install rate per exposure"),
    latency_regression_ms: float = typer.Option(0.0, help="milliseconds added to the treatment's latency"),
    broken_split: bool = typer.Option(False, help="lose 10% of the treatment's exposures before logging"),
    seed: int = typer.Option(1, help="traffic seed (also the experiment's hash seed)"),
    looks_per_day: int = typer.Option(1, min=1, help="reports (looks) per simulated day"),
    stop_on_decision: bool = typer.Option(True, help="end at the first decision other than keep_running"),
    out: Path = typer.Option(Path("var/ab-simulation.png"), help="where to save the plot (PNG)"),
    store: str | None = typer.Option(
        None, help="event store URL (sqlite:///path or postgresql+psycopg://...); default: a temp SQLite file"
    ),
    as_json: bool = typer.Option(
        False, "--json", help="also print the result (trajectory, decision) as JSON"
    ),
) -> None:
    """Simulate an experiment v1 (control) vs v2 with a planted effect and print how the decision evolves.

    Planted scenarios: ``--lift 0.10`` -> ship:v2 once significant and past the 7-day minimum runtime;
    ``--latency-regression-ms 30`` -> stop:guardrail (and auto-rollback); ``--broken-split`` ->
    invalid:srm. The store must not already hold the experiment ``sim-<seed>``.
    """
    from appsim.backends.event_store import SQLAlchemyEventStore
    from appsim.errors import AppsimError
    from appsim.observability import configure_logging
    from appsim.services.ab_simulation import simulate

    configure_logging("WARNING", json_logs=False)
    if not console.is_terminal:
        console.width = max(console.width, 150)

    weights = {"v1": split, "v2": round(1.0 - split, 12)}
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if store is None:
        tmp = tempfile.TemporaryDirectory(prefix="appsim-ab-sim-")
        store = f"sqlite:///{Path(tmp.name) / 'events.sqlite'}"
    t0 = time.perf_counter()
    try:
        with SQLAlchemyEventStore(store) as events:
            exp_id = f"sim-{seed}"
            if len(events.exposures(exp_id)):
                console.print(
                    f"[red]the store already holds experiment {exp_id!r}: use another --seed or store[/red]"
                )
                raise typer.Exit(2)
            console.print(
                f"simulating {days} days x {traffic_per_day:,} requests/day, split {split:g}/{1 - split:g}, "
                f"lift {lift:+.0%}, latency regression {latency_regression_ms:g} ms, broken split "
                f"{broken_split}, seed {seed}; store {events!r}"
            )
            res = simulate(
                lift,
                days,
                traffic_per_day,
                weights,
                base_rate,
                latency_regression_ms=latency_regression_ms,
                broken_split=broken_split,
                seed=seed,
                store=events,
                looks_per_day=looks_per_day,
                out_png=out,
                stop_on_decision=stop_on_decision,
            )
    except AppsimError as e:
        console.print(f"[red]{type(e).__name__}: {e.detail}[/red]")
        raise typer.Exit(1) from None
    finally:
        if tmp is not None:
            tmp.cleanup()
    seconds = time.perf_counter() - t0
    console.print(trajectory_table(res.trajectory, "v1", "v2", f"decision trajectory of {res.experiment_id}"))
    where = (
        f"at look {res.decided_at_look} (day {res.decided_at_look / looks_per_day:g})"
        if res.decided_at_look
        else "no decision yet"
    )
    console.print(
        f"[bold]decision: {res.decision}[/bold] {where}; {res.exposures:,} exposures; {seconds:.1f} s"
    )
    for reason in res.report.get("decision_reasons", []):
        console.print(f"  - {reason}")
    for action in res.report.get("actions", []):
        console.print(f"  action: {action['action']} -> weights {action['weights']}")
    console.print(f"plot: {res.png}")
    if as_json:
        print(json.dumps({k: v for k, v in res.to_dict().items() if k != "report"}, default=str, indent=1))
