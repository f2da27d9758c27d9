"""The load test's charts (PNG): matplotlib is an optional extra (`textbook-chat[loadtest]`),
imported only when a chart is asked for."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from server.errors import ConfigError
from server.tools.loadtest.report import LoadReport


def check_available() -> None:
    """Raise ConfigError when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("--png: needs matplotlib; pip install 'textbook-chat[loadtest]'")


def write_png(report: LoadReport, path: Path) -> None:
    """Chart the run: TTFD and gap percentiles per second, deltas/s, and the TTFD distribution."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Figure + the Agg canvas directly: no pyplot global state, safe off the main thread.
    figure = Figure(figsize=(10, 10), layout="constrained")
    FigureCanvasAgg(figure)
    latency, rate, distribution = figure.subplots(3, 1)
    seconds = [b.second + 0.5 for b in report.timeline]
    for label, values, style in (
        ("TTFD p50", [b.ttfd_p50_ms for b in report.timeline], "-"),
        ("TTFD p99", [b.ttfd_p99_ms for b in report.timeline], "--"),
        ("gap p50", [b.gap_p50_ms for b in report.timeline], "-"),
        ("gap p99", [b.gap_p99_ms for b in report.timeline], "--"),
    ):
        latency.plot(seconds, [math.nan if v is None else v for v in values], style, label=label)
    latency.set_yscale("log")
    latency.set_ylabel("ms")
    latency.set_title(f"{report.url}: latency per second")
    latency.legend()
    rate.plot(seconds, [b.deltas for b in report.timeline], label="deltas/s")
    rate.plot(seconds, [b.streams_failed for b in report.timeline], label="failed streams/s")
    rate.set_xlabel("seconds into the run")
    rate.legend()
    for x in (report.ramp_s, report.duration_s):
        latency.axvline(x, color="grey", linewidth=0.5)
        rate.axvline(x, color="grey", linewidth=0.5)
    if report.ttfd_samples.ms:
        top = (
            max(report.ttfd_samples.ms) * 1.02 or 1.0
        )  # from 0: the scale shows, not just the spread
        distribution.hist(report.ttfd_samples.ms, bins=60, range=(0.0, top))
    distribution.set_xlabel("time to first delta, ms")
    distribution.set_ylabel("streams")
    distribution.set_title(f"TTFD distribution (n={report.ttfd_ms.count})")
    figure.savefig(path, dpi=100)
