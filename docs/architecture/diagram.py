"""appsim on AWS: render docs/architecture.png and docs/architecture.pdf with the `diagrams` package.

    .venv/bin/pip install diagrams pyyaml      # + Graphviz (Debian: apt-get install -y graphviz)
    .venv/bin/python docs/architecture/diagram.py

Every node and cluster label comes from docs/architecture/services.yaml (the one list of AWS services);
only the edges (the data flows) are written here. The rendered PNG and PDF are committed: CI does not run
this script.

Nodes are Graphviz HTML-like labels (the service's AWS icon from the `diagrams` package above its text)
rather than `diagrams`' fixed-size icon nodes, so that Graphviz sizes every node to its text and labels
never overlap.

``drawn_labels()`` runs the same drawing code (``draw``) against a recording stand-in for `diagrams` and
returns every label it would draw (title, clusters, nodes, legend) without `diagrams` or Graphviz:
tests/infra/test_design_doc.py uses it.
"""

from __future__ import annotations

import html
import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SERVICES_FILE = HERE / "services.yaml"
OUT_STEM = HERE.parent / "architecture"  # -> docs/architecture.png, docs/architecture.pdf

TITLE = "appsim on AWS: ingestion -> serving -> feedback loop"
DIRECTION = "LR"  # data flows left to right; TB made a tall, narrow picture with longer edges
LEGEND_AFTER = "s3_art"  # the node the legend is placed after
EDGE_FONT = {"fontsize": "19", "fontname": "Helvetica"}  # per edge: diagrams.Edge has its own defaults
LEGEND_TITLE = "Considered, NOT deployed (docs/design.md, section 1, Appendix A):"

# flow -> (colour, line style, legend text)
FLOWS: dict[str, tuple[str, str, str]] = {
    "ingest": ("#1f6fb2", "solid", "blue: ingestion and catalogue build"),
    "serve": ("#2d7d32", "bold", "green: request path"),
    "feedback": ("#d35400", "solid", "orange: feedback loop (events, A/B, retraining)"),
    "deliver": ("#7b3fa0", "dashed", "purple dashed: CI/CD"),
    "monitor": ("#6c7a7d", "dashed", "grey dashed: monitoring and alerting"),
}

# (from, to, edge label, flow, ranks): node ids of services.yaml. ranks=False for edges that must not
# push their head to the right of their tail (back edges of the loop, configuration inputs).
EDGES: list[tuple[str, str, str, str, bool]] = [
    # ingestion -> artifact registry
    ("src_meta", "s3_raw", "", "ingest", True),
    ("src_emb", "s3_raw", "", "ingest", True),
    ("src_hist", "s3_raw", "", "ingest", True),
    ("scheduler", "sfn", "", "ingest", True),
    ("sfn", "build", "RunTask", "ingest", True),
    ("s3_raw", "build", "inputs", "ingest", True),
    ("build", "s3_art", "publish if the\noffline evaluation passes", "ingest", True),
    # delivery
    ("s3_art", "ci", "promoted artifacts\nbaked into the image", "deliver", False),
    ("ci", "ecr", "push", "deliver", True),
    ("ci", "codedeploy", "deploy", "deliver", True),
    ("ecr", "api", "pull", "deliver", True),
    ("codedeploy", "api", "shift traffic", "deliver", True),
    ("iam", "ci", "OIDC", "deliver", True),
    ("secrets", "api", "", "deliver", True),
    # serving
    ("callers", "dns", "", "serve", True),
    ("dns", "alb", "", "serve", True),
    ("alb", "api", "/find-similar\n/predict", "serve", True),
    # feedback loop
    ("api", "aurora", "exposures, outcomes", "feedback", True),
    ("mmp", "sqs", "outcomes\n(request_id)", "feedback", True),
    ("sqs", "writer", "", "feedback", True),
    ("writer", "alb", "POST /feedback", "feedback", False),
    ("report", "alb", "hourly GET /experiments", "feedback", False),
    ("aurora", "report", "", "feedback", True),
    ("cw", "firehose", "log\nsubscription", "feedback", True),
    ("firehose", "s3_lake", "", "feedback", True),
    ("glue", "athena", "", "feedback", True),
    ("s3_lake", "athena", "", "feedback", True),
    ("athena", "s3_raw", "refreshed campaign history (retraining)", "feedback", False),
    # monitoring
    ("api", "cw", "JSON logs", "monitor", True),
    ("writer", "cw", "", "monitor", True),
    ("alb", "cw", "", "monitor", True),
    ("api", "amp", "remote write", "monitor", True),
    ("amp", "amg", "", "monitor", True),
    ("cw", "amg", "", "monitor", True),
    ("amp", "sns", "alerts", "monitor", True),
    ("sns", "oncall", "", "monitor", True),
    ("cw", "codedeploy", "alarm -> rollback", "monitor", False),
]


def load_spec(path: Path = SERVICES_FILE) -> dict[str, Any]:
    """services.yaml, validated: node services are listed, groups and edge ends exist, ids are unique."""
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    listed = set(spec["services"])
    ids: set[str] = set()
    for node in spec["nodes"]:
        unknown = set(node["services"]) - listed
        if unknown:
            raise ValueError(f"node {node['id']}: services {sorted(unknown)} are not in `services`")
        if node["group"] is not None and node["group"] not in spec["groups"]:
            raise ValueError(f"node {node['id']}: unknown group {node['group']!r}")
        if node["id"] in ids:
            raise ValueError(f"duplicate node id {node['id']!r}")
        ids.add(node["id"])
    for a, b, _, flow, _ in EDGES:
        if a not in ids or b not in ids or flow not in FLOWS:
            raise ValueError(f"edge {a} -> {b} ({flow}) names an unknown node or flow")
    return spec


def node_lines(node: dict[str, Any]) -> list[str]:
    """The text of a node: its AWS services (one a line, bold), its title, its detail lines."""
    return [*node["services"], node["title"], *node.get("detail", [])]


def node_label(node: dict[str, Any]) -> str:
    return "\n".join(node_lines(node))


def legend_lines(spec: dict[str, Any]) -> list[str]:
    """The legend: the flows' colours, then the AWS services considered and not deployed."""
    return [
        "Edges:",
        *(text for _, _, text in FLOWS.values()),
        "",
        LEGEND_TITLE,
        *(f"- {name}" for name in spec["considered"]),
    ]


# ------------------------------------------------------------------------------------------- drawing


def draw(toolkit: dict[str, Any], spec: dict[str, Any], out_stem: Path = OUT_STEM) -> None:
    """Draw the diagram with ``toolkit``: the real `diagrams` objects, or the recording stand-in.

    ``toolkit`` keys: ``Diagram``, ``Cluster``, ``Edge`` (as in `diagrams`), ``node(node_spec) -> node`` and
    ``legend(lines) -> node``.
    """
    Diagram, Cluster, Edge = toolkit["Diagram"], toolkit["Cluster"], toolkit["Edge"]
    make_node: Callable[[dict[str, Any]], Any] = toolkit["node"]
    groups: dict[str, dict[str, Any]] = spec["groups"]
    made: dict[str, Any] = {}

    graph_attr = {
        "fontsize": "40",
        "fontname": "Helvetica-Bold",
        "labelloc": "t",
        "pad": "0.5",
        "nodesep": "0.25",
        "ranksep": "0.6",
        "splines": "spline",
        "dpi": "96",
        "newrank": "true",
    }
    # `diagrams` defaults to fixed-size 1.4 in icon boxes; nodes here are sized by their labels.
    node_attr = {"fixedsize": "false", "width": "0.3", "height": "0.3", "labelloc": "c", "margin": "0.08"}
    edge_attr = {"fontsize": "19", "fontname": "Helvetica", "penwidth": "2.0", "arrowsize": "1.1"}
    cluster_attr = {
        "fontsize": "24",
        "fontname": "Helvetica-Bold",
        "margin": "14",
        "bgcolor": "#f3f7fb",
        "pencolor": "#8aa2b8",
    }
    with Diagram(
        TITLE,
        filename=str(out_stem),
        outformat=["png", "pdf"],
        direction=DIRECTION,
        show=False,
        graph_attr=graph_attr,
        node_attr=node_attr,
        edge_attr=edge_attr,
    ):
        for gid, group in groups.items():
            attrs = {**cluster_attr, "labelloc": group.get("labelloc", "t")}
            with Cluster(group["label"], graph_attr=attrs):
                for node in spec["nodes"]:
                    if node["group"] == gid:
                        made[node["id"]] = make_node(node)
        for node in spec["nodes"]:
            if node["group"] is None:
                made[node["id"]] = make_node(node)
        legend = toolkit["legend"](legend_lines(spec))
        # An invisible edge puts the legend in the last column (top right) instead of the first.
        made[LEGEND_AFTER] >> Edge(style="invis") >> legend
        for a, b, label, flow, ranks in EDGES:
            color, style, _ = FLOWS[flow]
            attrs = {"label": label, "color": color, "fontcolor": color, "style": style, **EDGE_FONT}
            if not ranks:
                attrs["constraint"] = "false"
            made[a] >> Edge(**attrs) >> made[b]


def _icon_path(dotted: str) -> str:
    """The PNG of a `diagrams` node class, e.g. ``diagrams.aws.compute.Fargate``."""
    import diagrams

    module, _, name = dotted.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return os.path.join(os.path.dirname(os.path.dirname(diagrams.__file__)), cls._icon_dir, cls._icon)


def _html_node_label(node: dict[str, Any]) -> str:
    """Icon above the text; AWS service names in bold. Graphviz sizes the node to fit it."""
    services = [f"<B>{html.escape(s)}</B>" for s in node["services"]]
    rest = [html.escape(line) for line in [node["title"], *node.get("detail", [])]]
    text = "<BR/>".join(services + rest)
    return (
        '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="2" CELLPADDING="1">'
        '<TR><TD FIXEDSIZE="TRUE" WIDTH="60" HEIGHT="60">'
        f'<IMG SRC="{_icon_path(node["icon"])}" SCALE="TRUE"/></TD></TR>'
        f'<TR><TD><FONT POINT-SIZE="20">{text}</FONT></TD></TR></TABLE>>'
    )


def _real_toolkit() -> dict[str, Any]:
    import diagrams

    def node(spec_node: dict[str, Any]) -> Any:
        return diagrams.Node(_html_node_label(spec_node), shape="plaintext", fontname="Helvetica")

    def legend(lines: list[str]) -> Any:
        return diagrams.Node(
            "\\l".join(lines) + "\\l",
            shape="note",
            style="filled",
            fillcolor="#fdf2e9",
            fontname="Helvetica",
            fontsize="20",
        )

    return {
        "Diagram": diagrams.Diagram,
        "Cluster": diagrams.Cluster,
        "Edge": diagrams.Edge,
        "node": node,
        "legend": legend,
    }


class _Recorded:
    """A drawn thing of the recording toolkit: supports ``a >> edge >> b``."""

    def __rshift__(self, other: Any) -> Any:
        return other


def _recording_toolkit(labels: list[str]) -> dict[str, Any]:
    @contextmanager
    def context(label: str = "", **_: Any) -> Iterator[None]:
        labels.append(label)
        yield None

    def node(spec_node: dict[str, Any]) -> _Recorded:
        labels.append(node_label(spec_node))
        return _Recorded()

    def legend(lines: list[str]) -> _Recorded:
        labels.append("\n".join(lines))
        return _Recorded()

    return {
        "Diagram": context,
        "Cluster": context,
        "Edge": lambda **_: _Recorded(),
        "node": node,
        "legend": legend,
    }


def drawn_labels(spec_path: Path = SERVICES_FILE) -> list[str]:
    """Every label ``draw`` puts on the diagram (title, clusters, nodes, legend), without rendering.

    The legend is the last label.
    """
    labels: list[str] = []
    draw(_recording_toolkit(labels), load_spec(spec_path))
    return labels


def main() -> None:
    spec = load_spec()
    # `diagrams` writes its Graphviz source to the output path without an extension, which here would be
    # the docs/architecture/ directory itself: render in a scratch directory and copy the two files.
    with tempfile.TemporaryDirectory() as tmp:
        stem = Path(tmp) / "architecture"
        draw(_real_toolkit(), spec, stem)
        for ext in ("png", "pdf"):
            dest = OUT_STEM.with_suffix(f".{ext}")
            shutil.copyfile(stem.with_suffix(f".{ext}"), dest)
            print(dest, file=sys.stderr)


if __name__ == "__main__":
    main()
