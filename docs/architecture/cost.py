"""Monthly AWS cost of appsim at 100, 10k and 1M requests/day (docs/design.md, section 6 and Appendix C).

    .venv/bin/python docs/architecture/cost.py          # prints the markdown tables pasted into design.md

Prices: on-demand, us-east-1, as of June 2025 (the author's last check of the AWS price pages; not
re-verified when this was written on 2026-11-29: the build machine cannot reach aws.amazon.com). Check
before use. Capacity inputs come from docs/benchmarks.md (cited in design.md); every other input is an
assumption named here and listed in design.md section 7. tests/infra/test_design_doc.py recomputes the
tables with this module and compares them with design.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HOURS = 730.0  # hours per month (AWS pricing convention)
DAYS = 30.4  # days per month

PRICES_AS_OF = "June 2025"
PRICE = {
    # AWS Fargate, Linux
    "fargate_arm_vcpu_h": 0.03238,
    "fargate_arm_gb_h": 0.00356,
    "fargate_x86_vcpu_h": 0.04048,
    "fargate_x86_gb_h": 0.004445,
    "fargate_spot_discount": 0.70,  # Fargate Spot (x86 only): assumed 70% below on-demand; varies
    # Application Load Balancer
    "alb_h": 0.0225,
    "alb_lcu_h": 0.008,
    # Amazon VPC NAT gateway
    "nat_h": 0.045,
    "nat_gb": 0.045,
    # Amazon Aurora PostgreSQL Serverless v2, Aurora Standard
    "aurora_acu_h": 0.12,
    "aurora_gb_month": 0.10,
    "aurora_io_per_million": 0.20,
    # Amazon S3 Standard
    "s3_gb_month": 0.023,
    # Amazon Data Firehose (direct put) + Parquet conversion
    "firehose_gb": 0.029,
    "firehose_convert_gb": 0.018,
    # Amazon Athena
    "athena_tb": 5.00,
    # Amazon CloudWatch
    "cw_logs_ingest_gb": 0.50,
    "cw_logs_store_gb_month": 0.03,
    "cw_alarm_month": 0.10,
    # Amazon Managed Service for Prometheus
    "amp_per_10m_samples": 0.90,
    # Amazon Managed Grafana
    "amg_editor_month": 9.0,
    "amg_viewer_month": 5.0,
    # AWS Secrets Manager
    "secret_month": 0.40,
    # Amazon ECR
    "ecr_gb_month": 0.10,
    # Amazon SQS standard, after the free first million requests a month
    "sqs_per_million": 0.40,
    "sqs_free_million": 1.0,
    # Amazon Route 53 private hosted zone
    "r53_zone_month": 0.50,
}

# ---- capacity inputs, docs/benchmarks.md section 2 (server CPU per request, one worker)
CPU_MS_V2_COLD_START = 92.0  # cold start v2 (metadata), the sizing request: top of 77-92 ms over 3 runs
WORKER_RSS_MIB = 505  # RSS after 200 requests, one worker (section 3)

# ---- assumptions (design.md section 7)
PEAK_FACTOR = 3.0  # peak hour / 24-hour average: the day's traffic in ~8 business hours
CPU_TARGET = 0.5  # target CPU utilisation of the API service (autoscaling target)
MIN_TASKS = 2  # one task per AZ
LOG_KB_PER_REQUEST = 1.0  # JSON request log line + share of other log lines
EXPOSURE_BYTES = 250  # one exposure row in PostgreSQL with its two indexes
OUTCOMES_PER_REQUEST = 1.0  # outcome events posted back per request (impression/click/install/revenue)
SERIES_PER_TASK = 1000  # Prometheus series per API task (workers merged by multiprocess mode)
SCRAPE_S = 15  # deploy/prometheus/prometheus.yml
GRAFANA_EDITORS, GRAFANA_VIEWERS = 1, 4
ALARMS = 8


@dataclass(frozen=True)
class Tier:
    requests_per_day: int
    api_vcpu: float  # per task
    api_gb: float  # per task
    nat_gateways: int
    aurora_acu: float  # average ACUs
    aurora_io_million: float  # I/O requests per month (millions)
    report_task: bool  # hourly A/B report in its own 2 vCPU / 16 GB Spot task (else in the API)
    lcu: float  # average ALB LCUs
    lake_gb: float  # S3 event lake held (12 months of Parquet)
    athena_tb: float  # scanned per month


TIERS = [
    Tier(100, 1, 2, 1, 0.5, 1, False, 0.05, 0.1, 0.001),
    Tier(10_000, 1, 2, 1, 0.5, 5, False, 0.05, 1, 0.01),
    Tier(1_000_000, 2, 4, 2, 2.0, 300, True, 0.3, 100, 0.3),
]


def peak_rps(requests_per_day: float) -> float:
    return requests_per_day / 86_400 * PEAK_FACTOR


def vcpu_needed(requests_per_day: float) -> float:
    """vCPUs the API needs at peak if every request is a v2 cold start, at the CPU target."""
    return peak_rps(requests_per_day) * CPU_MS_V2_COLD_START / 1000 / CPU_TARGET


def api_tasks(t: Tier) -> int:
    return max(MIN_TASKS, math.ceil(vcpu_needed(t.requests_per_day) / t.api_vcpu))


def fargate_month(
    vcpu: float, gb: float, hours: float = HOURS, *, arm: bool = True, spot: bool = False
) -> float:
    if arm:
        per_h = vcpu * PRICE["fargate_arm_vcpu_h"] + gb * PRICE["fargate_arm_gb_h"]
    else:
        per_h = vcpu * PRICE["fargate_x86_vcpu_h"] + gb * PRICE["fargate_x86_gb_h"]
    if spot:
        per_h *= 1 - PRICE["fargate_spot_discount"]
    return per_h * hours


def lines(t: Tier) -> dict[str, float]:
    """Cost per month (USD) per line item."""
    p = PRICE
    month_requests = t.requests_per_day * DAYS
    log_gb = month_requests * LOG_KB_PER_REQUEST / 1e6
    samples = api_tasks(t) * SERIES_PER_TASK * (86_400 / SCRAPE_S) * DAYS
    sqs_million = month_requests * OUTCOMES_PER_REQUEST * 1.2 / 1e6  # send + batched receive/delete
    batch_h = 0.25 * DAYS + 1.0 * 4.3  # nightly build 15 min, weekly retrain 1 h (2 vCPU, 8 GB)
    batch = fargate_month(2, 8, batch_h, arm=False, spot=True)
    if t.report_task:  # hourly report: 5 minutes of 2 vCPU / 16 GB
        batch += fargate_month(2, 16, 24 * DAYS * 5 / 60, arm=False, spot=True)
    aurora_gb = max(1.0, t.requests_per_day * 90 * EXPOSURE_BYTES * 1.3 / 1e9)  # 90 days + outcomes
    return {
        "API tasks (Fargate, Graviton)": api_tasks(t) * fargate_month(t.api_vcpu, t.api_gb),
        "outcome writer (0.25 vCPU, 0.5 GB)": fargate_month(0.25, 0.5),
        "batch tasks (Fargate Spot)": batch,
        "Application Load Balancer": HOURS * (p["alb_h"] + t.lcu * p["alb_lcu_h"]),
        "NAT gateway(s)": t.nat_gateways * HOURS * p["nat_h"] + log_gb * 1.2 * p["nat_gb"],
        "Aurora PostgreSQL Serverless v2": t.aurora_acu * HOURS * p["aurora_acu_h"]
        + aurora_gb * p["aurora_gb_month"]
        + t.aurora_io_million * p["aurora_io_per_million"],
        "S3 (artifacts, raw, lake)": (2 + t.lake_gb) * p["s3_gb_month"],
        "Data Firehose + Athena": log_gb * (p["firehose_gb"] + p["firehose_convert_gb"])
        + t.athena_tb * p["athena_tb"],
        "CloudWatch (logs, alarms)": log_gb * (p["cw_logs_ingest_gb"] + 0.15 * p["cw_logs_store_gb_month"])
        + ALARMS * p["cw_alarm_month"],
        "Managed Prometheus": samples / 1e7 * p["amp_per_10m_samples"] + 1.0,  # + rule/dashboard queries
        "Managed Grafana": GRAFANA_EDITORS * p["amg_editor_month"] + GRAFANA_VIEWERS * p["amg_viewer_month"],
        "Secrets Manager, ECR, Route 53, SQS": 2 * p["secret_month"]
        + 12 * p["ecr_gb_month"]
        + p["r53_zone_month"]
        + max(0.0, sqs_million - p["sqs_free_million"]) * p["sqs_per_million"],
    }


def totals() -> dict[int, float]:
    return {t.requests_per_day: sum(lines(t).values()) for t in TIERS}


def markdown() -> str:
    heads = [f"{t.requests_per_day:,}/day" for t in TIERS]
    out = ["| line item (USD/month) | " + " | ".join(heads) + " |", "|---" * (len(TIERS) + 1) + "|"]
    per = [lines(t) for t in TIERS]
    for item in per[0]:
        out.append(f"| {item} | " + " | ".join(f"{x[item]:,.2f}" for x in per) + " |")
    out.append("| **Total** | " + " | ".join(f"**{sum(x.values()):,.0f}**" for x in per) + " |")
    per_1k = [sum(x.values()) / (t.requests_per_day * DAYS) * 1000 for x, t in zip(per, TIERS, strict=True)]
    out.append("| per 1,000 requests | " + " | ".join(f"{c:,.2f}" for c in per_1k) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    for t in TIERS:
        print(
            f"{t.requests_per_day:>9,}/day: peak {peak_rps(t.requests_per_day):.4f} req/s, "
            f"vCPU {vcpu_needed(t.requests_per_day):.3f}, "
            f"tasks {api_tasks(t)} x {t.api_vcpu} vCPU / {t.api_gb} GB"
        )
    print()
    print(markdown())
