"""deploy/grafana/snackvideo-dashboard.json, built with grafana-foundation-sdk.

The SDK's builders and models are generated from Grafana's own dashboard schema, so a
panel option or a query field that Grafana does not have is a type error (mypy checks
this file) or an exception here, not a JSON key Grafana silently ignores. The JSON is
committed, for Grafana's file provisioning and for readers; tests/test_grafana_kit.py
fails when it differs from what this script builds. After a change:

    .venv/bin/python -m scripts.grafana_dashboard > deploy/grafana/snackvideo-dashboard.json

Queries follow docs/operations.md: per-worker counters and histograms are summed across
workers, the cluster-wide gauges (read from Redis, the same on every worker) taken with
``max``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    TooltipDisplayMode,
)
from grafana_foundation_sdk.models.dashboard import DashboardCursorSync, DataSourceRef

#: The datasource deploy/grafana/provisioning/datasources/prometheus.yml provisions.
DATASOURCE = DataSourceRef(type_val="prometheus", uid="snackvideo-prometheus")
UID = "snackvideo-dispatch"
RATE = "$__rate_interval"


def query(expr: str, legend: str, ref_id: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id)


def graph(
    title: str, description: str, unit: str, *queries: prometheus.Dataquery
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(8)
        .span(12)
        .legend(
            common.VizLegendOptions()
            .display_mode(LegendDisplayMode.TABLE)
            .placement(LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(
            common.VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING)
        )
    )
    for ref_id, target in zip("ABCDEF", queries, strict=False):
        panel.with_target(target.ref_id(ref_id))
    return panel


def number(title: str, description: str, unit: str, expr: str) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(4)
        .span(6)
        .graph_mode(BigValueGraphMode.AREA)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
        .with_target(query(expr, title))
    )


def p(quantile: float, histogram: str) -> str:
    return f"histogram_quantile({quantile}, sum by (le) (rate({histogram}_bucket[{RATE}])))"


Section = tuple[str, list[stat.Panel | timeseries.Panel]]


def sections() -> list[Section]:
    """Rows of panels, top to bottom."""
    return [
        ("At a glance", [
            number("Queue depth", "Messages waiting in the delivery queue.", "short",
                   "max(snackvideo_queue_depth)"),
            number("Scheduled retries", "Jobs parked until a due time (backoffs, long "
                   "throttle waits).", "short", "max(snackvideo_scheduled_jobs)"),
            number("Dead letters", "Entries in the dead-letter queue now.", "short",
                   "sum(max by (reason) (snackvideo_dead_letter_depth))"),
            number("Redis readable", "1 when the last scrape could read Redis.", "short",
                   "min(snackvideo_redis_up)"),
        ]),
        ("Flow", [
            graph(
                "Queue depth and scheduled retries",
                "Waiting to be delivered, and parked for a later try.",
                "short",
                query("max(snackvideo_queue_depth)", "queue depth"),
                query("max(snackvideo_scheduled_jobs)", "scheduled"),
                query(f"sum(rate(snackvideo_events_enqueued_total[{RATE}]))", "enqueued/s"),
            ),
            graph(
                "Deliveries by outcome and status",
                "Task runs per second by how they ended and Scalev's last HTTP status.",
                "reqps",
                query(
                    f"sum by (outcome, status) (rate(snackvideo_deliveries_total[{RATE}]))",
                    "{{outcome}} {{status}}",
                ),
            ),
        ]),
        ("Dead letters", [
            graph(
                "Dead letters by reason",
                "New entries per reason in each interval; the queue's depth per reason.",
                "short",
                query(
                    f"sum by (reason) (increase(snackvideo_dead_letters_total[{RATE}]))",
                    "new {{reason}}",
                ),
                query("max by (reason) (snackvideo_dead_letter_depth)", "in queue {{reason}}"),
            ),
            graph(
                "Dead letters trimmed and redirects refused",
                "Entries deleted by retention nobody replayed; 3xx answers never followed.",
                "short",
                query(
                    f"max by (reason) (increase(snackvideo_dead_letters_trimmed_total[{RATE}]))",
                    "trimmed {{reason}}",
                ),
                query(
                    f"sum by (status) (increase(snackvideo_redirects_refused_total[{RATE}]))",
                    "redirect {{status}}",
                ),
            ),
        ]),
        ("Throttle", [
            graph(
                "Throttle: remaining budget",
                "Requests left in Scalev's window (X-Ratelimit-Remaining), the limit, and "
                "requests in flight, per scope.",
                "short",
                query("max by (scope) (snackvideo_rate_limit_remaining)", "remaining {{scope}}"),
                query("max by (scope) (snackvideo_rate_limit_limit)", "limit {{scope}}"),
                query("max by (scope) (snackvideo_rate_limit_in_flight)", "in flight {{scope}}"),
            ),
            graph(
                "Throttle waits and 429s",
                "Worker-seconds per second spent waiting for the budget, the p95 wait, and "
                "429 answers per second.",
                "s",
                query(f"sum(rate(snackvideo_throttle_wait_seconds_sum[{RATE}]))", "waiting"),
                query(p(0.95, "snackvideo_throttle_wait_seconds"), "p95 wait"),
                query(f"sum(rate(snackvideo_rate_limited_responses_total[{RATE}]))", "429s/s"),
            ),
        ]),
        ("Latency", [
            graph(
                "Event age p99",
                "From enqueue to Scalev's 2xx: queueing, throttle waits, retries.",
                "s",
                query(p(0.99, "snackvideo_event_age_seconds"), "p99"),
                query(p(0.5, "snackvideo_event_age_seconds"), "p50"),
            ),
            graph(
                "Scalev latency",
                "Duration of each HTTP request to Scalev, timeouts included.",
                "s",
                query(p(0.5, "snackvideo_delivery_seconds"), "p50"),
                query(p(0.95, "snackvideo_delivery_seconds"), "p95"),
                query(p(0.99, "snackvideo_delivery_seconds"), "p99"),
            ),
        ]),
    ]  # fmt: skip


def build() -> dashboard.Dashboard:
    board = (
        dashboard.Dashboard("snackvideo-dispatch")
        .uid(UID)
        .description("Deliveries to Scalev: queue, retries, dead letters, throttle, latency.")
        .tags(["snackvideo"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
    )
    panel_id = 0
    for title, panels in sections():
        panel_id += 1
        board.with_row(dashboard.Row(title).id(panel_id))
        for panel in panels:
            panel_id += 1
            board.with_panel(panel.id(panel_id))
    return board


def dashboard_json() -> dict[str, Any]:
    """The dashboard model as Grafana's JSON, ``id`` unset (Grafana assigns it)."""
    encoded = JSONEncoder(sort_keys=True).encode(build().build())
    return dict(json.loads(encoded))


def main() -> None:
    json.dump(dashboard_json(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
