"""docs/design.md, docs/architecture/services.yaml and docs/architecture/diagram.py agree.

* One list of AWS services (services.yaml). Every deployed service is drawn on a node or cluster of the
  diagram (the labels come from ``diagram.drawn_labels()``, which runs the diagram's own drawing code
  against a recording stand-in: no `diagrams` package, no Graphviz) and is named in design.md; every
  service design.md names (short forms included: "ALB", "Fargate", ...) is in the list; services that were
  considered and rejected appear only in the diagram's legend.
* Every capacity figure of the scaling sections is traceable: it carries a ``[benchmarks: "..."]`` marker
  whose quoted text is found in docs/benchmarks.md, and the derived tables (requests per second, index
  memory) are recomputed here.
* The rendered diagram (docs/architecture.png, .pdf) is committed; it is not rendered here.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
DESIGN = DOCS / "design.md"
BENCHMARKS = DOCS / "benchmarks.md"
SERVICES = DOCS / "architecture" / "services.yaml"
DIAGRAM = DOCS / "architecture" / "diagram.py"
COST = DOCS / "architecture" / "cost.py"

# AWS services by canonical name -> the ways a text may name them (regular expressions). Services the
# design does not use are listed too, so that naming one in design.md without adding it to services.yaml
# (and thus to the diagram) fails.
KNOWN_AWS: dict[str, list[str]] = {
    # deployed
    "Amazon Route 53": [r"Route\s?53"],
    "Application Load Balancer": [r"Application Load Balancer", r"\bALB\b", r"Elastic Load Balancing"],
    "Amazon ECS": [r"\bECS\b", r"Elastic Container Service"],
    "AWS Fargate": [r"\bFargate\b"],
    "AWS Distro for OpenTelemetry": [r"Distro for OpenTelemetry", r"\bADOT\b"],
    "Amazon ECR": [r"\bECR\b", r"Elastic Container Registry"],
    "Amazon S3": [r"\bS3\b", r"Simple Storage Service"],
    "Amazon Aurora PostgreSQL": [r"\bAurora\b"],
    "Amazon SQS": [r"\bSQS\b", r"Simple Queue Service"],
    "Amazon Data Firehose": [r"\bFirehose\b", r"Kinesis Data Firehose"],
    "AWS Glue Data Catalog": [r"\bGlue\b"],
    "Amazon Athena": [r"\bAthena\b"],
    "Amazon EventBridge Scheduler": [r"\bEventBridge\b"],
    "AWS Step Functions": [r"\bStep Functions\b"],
    "Amazon CloudWatch": [r"\bCloudWatch\b"],
    "Amazon Managed Service for Prometheus": [r"Managed Service for Prometheus", r"\bAMP\b"],
    "Amazon Managed Grafana": [r"Managed Grafana", r"\bAMG\b"],
    "Amazon SNS": [r"\bSNS\b", r"Simple Notification Service"],
    "AWS CodeDeploy": [r"\bCodeDeploy\b"],
    "AWS Secrets Manager": [r"\bSecrets Manager\b"],
    "AWS IAM": [r"\bIAM\b", r"Identity and Access Management"],
    "Amazon VPC": [r"\bVPC\b", r"\bNAT gateways?\b", r"\bPrivateLink\b"],
    # considered
    "Amazon EKS": [r"\bEKS\b", r"Elastic Kubernetes Service"],
    "Amazon SageMaker": [r"\bSageMaker\b"],
    "Amazon OpenSearch Service": [r"\bOpenSearch\b"],
    "Amazon DynamoDB": [r"\bDynamoDB\b"],
    "Amazon ElastiCache": [r"\bElastiCache\b"],
    "AWS Lambda": [r"\bLambda\b"],
    "AWS Batch": [r"\bAWS Batch\b"],
    # neither (naming one in design.md must fail until it is added to services.yaml)
    "Amazon RDS": [r"\bRDS\b", r"Relational Database Service"],
    "Amazon EC2": [r"\bEC2\b", r"Elastic Compute Cloud"],
    "Amazon Kinesis Data Streams": [r"Kinesis Data Streams"],
    "Amazon MSK": [r"\bMSK\b", r"Managed Streaming for (Apache )?Kafka"],
    "Amazon API Gateway": [r"API Gateway"],
    "Amazon CloudFront": [r"\bCloudFront\b"],
    "AWS WAF": [r"\bWAF\b"],
    "AWS Shield": [r"\bShield\b"],
    "AWS KMS": [r"\bKMS\b", r"Key Management Service"],
    "AWS Certificate Manager": [r"Certificate Manager", r"\bACM\b"],
    "AWS Systems Manager": [r"Systems Manager", r"Parameter Store", r"\bSSM\b"],
    "AWS CodePipeline": [r"\bCodePipeline\b"],
    "AWS CodeBuild": [r"\bCodeBuild\b"],
    "AWS CodeCommit": [r"\bCodeCommit\b"],
    "AWS App Runner": [r"App Runner"],
    "AWS Elastic Beanstalk": [r"Elastic Beanstalk"],
    "Amazon Redshift": [r"\bRedshift\b"],
    "Amazon EMR": [r"\bEMR\b"],
    "Amazon QuickSight": [r"\bQuickSight\b"],
    "AWS Lake Formation": [r"Lake Formation"],
    "Amazon MemoryDB": [r"\bMemoryDB\b"],
    "Amazon DocumentDB": [r"\bDocumentDB\b"],
    "Amazon Neptune": [r"\bNeptune\b"],
    "Amazon Timestream": [r"\bTimestream\b"],
    "Amazon Bedrock": [r"\bBedrock\b"],
    "Amazon EFS": [r"\bEFS\b", r"Elastic File System"],
    "Amazon EBS": [r"\bEBS\b", r"Elastic Block Store"],
    "AWS X-Ray": [r"\bX-Ray\b"],
    "AWS CloudTrail": [r"\bCloudTrail\b"],
    "Amazon GuardDuty": [r"\bGuardDuty\b"],
    "AWS Chatbot": [r"\bChatbot\b"],
    "AWS Backup": [r"\bAWS Backup\b"],
    "AWS Cost Explorer": [r"Cost Explorer"],
    "AWS Budgets": [r"\bAWS Budgets\b"],
    "AWS Compute Optimizer": [r"Compute Optimizer"],
    "AWS Cloud Map": [r"Cloud Map"],
    "AWS App Mesh": [r"App Mesh"],
}
# Words after "Amazon"/"AWS" that are not services (a processor family, the pricing pages...).
NOT_SERVICES = [
    r"APIs?\b",
    r"Graviton",
    r"Pricing",
    r"Free Tier",
    r"Linux",
    r"Region",
    r"Well-Architected",
    r"Savings Plans",
]

MARKER = re.compile(r"\[benchmarks:\s*\"([^\"]+)\"\]")


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _load_diagram() -> ModuleType:
    return _load(DIAGRAM, "appsim_architecture_diagram")


def _load_cost() -> ModuleType:
    return _load(COST, "appsim_architecture_cost")


def _norm(text: str) -> str:
    """Whitespace collapsed, markdown emphasis and code marks dropped, thin spaces as spaces."""
    text = text.replace("\u202f", " ").replace("\u2009", " ").replace("\u00a0", " ")
    text = re.sub(r"[*`]", "", text)
    return re.sub(r"\s+", " ", text).strip()


def _mentions(text: str, canonical: str) -> bool:
    return any(re.search(p, text) for p in [re.escape(canonical), *KNOWN_AWS[canonical]])


def _services_named(text: str) -> set[str]:
    return {name for name in KNOWN_AWS if _mentions(text, name)}


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(SERVICES.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def design() -> str:
    assert DESIGN.is_file(), "docs/design.md is missing"
    return _norm(DESIGN.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def labels() -> tuple[list[str], str]:
    """(every label drawn except the legend, the legend)."""
    drawn = [_norm(x) for x in _load_diagram().drawn_labels()]
    return drawn[:-1], drawn[-1]


def test_service_lists_are_canonical(services: dict) -> None:
    deployed, considered = services["services"], services["considered"]
    assert len(set(deployed)) == len(deployed) and len(set(considered)) == len(considered)
    assert not set(deployed) & set(considered)
    unknown = [s for s in [*deployed, *considered] if s not in KNOWN_AWS]
    assert not unknown, f"add {unknown} to KNOWN_AWS in this test (with the short forms a text may use)"


def test_every_deployed_service_is_drawn_and_named_in_the_design(services: dict, design: str, labels) -> None:
    drawn, _legend = labels
    text = " | ".join(drawn)
    for name in services["services"]:
        assert name in text, f"{name} (services.yaml) is not drawn on any node or cluster of the diagram"
        assert name in design, f"{name} (services.yaml) is not named in docs/design.md"


def test_considered_services_are_in_the_design_and_only_in_the_legend(
    services: dict, design: str, labels
) -> None:
    drawn, legend = labels
    for name in services["considered"]:
        assert name in design, f"{name} (considered) is not named in docs/design.md"
        assert name in legend, f"{name} (considered) is missing from the diagram's legend"
        assert not any(_mentions(label, name) for label in drawn), f"{name} is drawn as if deployed"


def test_design_names_no_aws_service_missing_from_the_diagram(services: dict, design: str, labels) -> None:
    drawn, legend = labels
    listed = set(services["services"]) | set(services["considered"])
    named = _services_named(design)
    missing = sorted(named - listed)
    assert not missing, f"docs/design.md names {missing}, which services.yaml (hence the diagram) lacks"
    on_diagram = _services_named(" | ".join(drawn)) | _services_named(legend)
    assert named <= on_diagram, f"named in design.md but not on the diagram: {sorted(named - on_diagram)}"
    assert _services_named(" | ".join(drawn)) <= set(services["services"])


def test_every_amazon_or_aws_name_in_the_design_is_known(design: str) -> None:
    anchored = [re.escape(n.split(" ", 1)[1]) for n in KNOWN_AWS if n.startswith(("Amazon ", "AWS "))]
    anchored += [p.replace(r"\b", "") for pats in KNOWN_AWS.values() for p in pats] + NOT_SERVICES
    anchored += [re.escape(n) for n in KNOWN_AWS]
    unknown = []
    for m in re.finditer(r"\b(?:Amazon|AWS)\s+(?=[A-Z])", design):
        rest = design[m.end() :]
        if not any(re.match(p, rest) for p in anchored):
            unknown.append(design[m.start() : m.end() + 30])
    assert not unknown, f"unrecognised AWS names in docs/design.md (add them to KNOWN_AWS): {unknown}"


# ------------------------------------------------------------------------------- scaling traceability


def _scaling_sections() -> str:
    """The text of every section of design.md whose heading mentions scaling (main text + appendix)."""
    raw = DESIGN.read_text(encoding="utf-8")
    parts = re.split(r"(?m)^(#{2,3} .*)$", raw)
    out = []
    for i in range(1, len(parts) - 1, 2):
        if "scaling" in parts[i].lower():
            out.append(parts[i] + parts[i + 1])
    assert out, "docs/design.md has no scaling section"
    return "\n".join(out)


def test_every_cited_capacity_figure_is_in_benchmarks_md() -> None:
    scaling = _scaling_sections()
    cited = MARKER.findall(scaling)
    assert len(cited) >= 8, 'the scaling sections must cite their capacity figures as [benchmarks: "..."]'
    assert BENCHMARKS.is_file(), "docs/design.md cites docs/benchmarks.md, which is missing"
    bench = _norm(BENCHMARKS.read_text(encoding="utf-8"))
    absent = [c for c in cited if _norm(c) not in bench]
    assert not absent, f"cited but not found in docs/benchmarks.md: {absent}"


def test_every_footnote_of_the_scaling_sections_cites_benchmarks_md() -> None:
    """A figure in the text carries a footnote [^bN]; its definition holds a [benchmarks: "..."] marker."""
    raw = DESIGN.read_text(encoding="utf-8")
    definitions = dict(re.findall(r"(?m)^\[\^(b\d+)\]:\s*(.+)$", raw))
    used = set(re.findall(r"\[\^(b\d+)\](?!:)", _scaling_sections()))
    assert used, "the scaling sections cite no footnote"
    for ref in sorted(used):
        assert ref in definitions, f"footnote [^{ref}] has no definition"
        assert MARKER.search(definitions[ref]), f'footnote [^{ref}] cites no [benchmarks: "..."]'
    assert set(definitions) <= used, f"unused footnotes: {sorted(set(definitions) - used)}"


def test_cost_model_inputs_are_the_benchmarked_figures() -> None:
    cost = _load_cost()
    scaling = _scaling_sections()
    cited = " ".join(MARKER.findall(scaling))
    assert re.search(rf"\b{cost.CPU_MS_V2_COLD_START:g} ms for v2 cold start", cited)
    assert f"RSS {cost.WORKER_RSS_MIB} MiB" in cited


def _table_rows(section: str, first_header: str) -> list[list[str]]:
    """Body rows of the first markdown table whose first header cell starts with ``first_header``."""
    lines = section.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and cells[0].lower().startswith(first_header.lower()):
            rows = []
            for body in lines[i + 2 :]:
                if not body.lstrip().startswith("|"):
                    break
                rows.append([c.strip() for c in body.strip().strip("|").split("|")])
            return rows
    raise AssertionError(f"no table starting with {first_header!r}")


def _num(cell: str) -> float:
    m = re.search(r"[-+]?\d[\d,]*(?:\.\d+)?", cell.replace("\u202f", ""))
    assert m, f"no number in {cell!r}"
    return float(m.group(0).replace(",", ""))


def test_request_rates_and_tasks_are_recomputed() -> None:
    cost = _load_cost()
    scaling = _scaling_sections()
    m = re.search(r"peak factor (?:of )?(\d+(?:\.\d+)?)", scaling, re.IGNORECASE)
    assert m, "state the peak factor as 'peak factor N'"
    peak = float(m.group(1))
    assert peak == cost.PEAK_FACTOR
    rows = _table_rows(scaling, "requests/day")
    tiers = {t.requests_per_day: t for t in cost.TIERS}
    assert {int(_num(r[0])) for r in rows} == set(tiers)
    for row in rows:
        per_day = _num(row[0])
        tier = tiers[int(per_day)]
        assert math.isclose(_num(row[1]), per_day / 86_400, rel_tol=0.02, abs_tol=0.0006), row
        assert math.isclose(_num(row[2]), per_day / 86_400 * peak, rel_tol=0.02, abs_tol=0.002), row
        assert math.isclose(_num(row[3]), cost.vcpu_needed(per_day), rel_tol=0.02, abs_tol=0.001), row
        tasks = re.match(r"(\d+) × \((\d+(?:\.\d+)?) vCPU, (\d+(?:\.\d+)?) GB\)", row[4])
        assert tasks, row
        assert int(tasks.group(1)) == cost.api_tasks(tier), row
        assert float(tasks.group(2)) == tier.api_vcpu and float(tasks.group(3)) == tier.api_gb, row


def test_index_memory_is_recomputed() -> None:
    """Rows: apps n | d | vectors n*d*4 (MB) | HNSW links n*M*2*4 (MB) | total; M is stated as 'M = 32'."""
    scaling = _scaling_sections()
    m = re.search(r"M = (\d+)", scaling)
    assert m, "state the HNSW degree as 'M = <int>'"
    hnsw_m = int(m.group(1))
    rows = _table_rows(scaling, "apps")
    assert {_num(r[0]) for r in rows} >= {10_000, 100_000, 1_000_000, 5_000_000}, "cover 10k to 5M apps"
    for row in rows:
        n, d = _num(row[0]), _num(row[1])
        vectors, links = n * d * 4 / 1e6, n * hnsw_m * 2 * 4 / 1e6
        assert math.isclose(_num(row[2]), vectors, rel_tol=0.01), row
        assert math.isclose(_num(row[3]), links, rel_tol=0.01), row
        assert math.isclose(_num(row[4]), vectors + links, rel_tol=0.01), row


def test_cost_tables_are_the_cost_models_output() -> None:
    """design.md's cost tables are what docs/architecture/cost.py prints (re-run it after a change)."""
    cost = _load_cost()
    raw = DESIGN.read_text(encoding="utf-8")
    assert _norm(cost.markdown()) in _norm(raw), "paste docs/architecture/cost.py's output into Appendix C"
    assert f"Prices as of {cost.PRICES_AS_OF}, on-demand, us-east-1, check before use" in _norm(raw)
    totals = cost.totals()
    section = raw[raw.index("## 6. Cost per month") :]
    row = next(r for r in _table_rows(section, "requests/day") if r[0].startswith("USD/month"))
    heads = next(
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| requests/day |")
    )
    for head, cell in zip(heads[1:], row[1:], strict=True):
        assert math.isclose(_num(cell), totals[int(_num(head))], abs_tol=0.5), (head, cell)
