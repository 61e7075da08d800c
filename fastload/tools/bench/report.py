"""Benchmark output: the printed table, the JSON file and the PNG chart.

JSON schema (``SCHEMA_VERSION`` 1)::

    {
      "schema": 1,
      "machine": {"cpu", "cpu_native_bf16", "cores_logical", "cores_physical", "cores_usable", "memory_gb", "gpu" (null),
                  "gpu_count", "cuda", "os", "python", "torch", "dali", "numpy", "opencv", "date"},
      "command": "the exact argv, shell-quoted",
      "date": ISO 8601 with time zone,
      "config": {"cache", "augment", "loaders", "batch_sizes", "size", "steps", "warmup", "workers", "device",
                 "model", "precision", "width", "seed", "prefetch", "rounds", "cores" (null: no sweep), "baseline"},
      "baseline": the baseline loader, or null when it was not among the loaders (then every vs_baseline is null),
      "results": [{"loader": "cpu" | "dali" | "albumentations" | "albumentations-loop" | "kornia",
                   "device": "cpu" | "cuda:0", "batch_size", "cores" (CPUs the process tree ran on), "samples_per_s",
                   "batches_per_s", "wait_p50_ms", "wait_p95_ms", "wait_mean_ms", "h2d_mean_ms", "step_mean_ms",
                   "stall_pct", "host_stall_pct", "stall_method", "cpu_cores_busy", "cpu_util_pct",
                   "peak_rss_mb", "gpu_mem_peak_mb" (torch's allocator; null without CUDA),
                   "gpu_mem_device_mb" (device-wide, NVML / mem_get_info, above the reading before the loader was
                   made: DALI's pool too; null without CUDA), "gpu_mem_device_peak_mb", "first_batch_s", "wall_s",
                   "steps", "warmup", "samples", "workers", "model", "precision",
                   "rounds", "samples_per_s_rounds", "samples_per_s_min", "samples_per_s_max", "spread_pct",
                   "vs_baseline" (samples/s over the baseline's, same cores and batch size; null without it)}, ...],
      "runs": [every single measurement: the result keys above before the median, plus "round"]
    }

Every number in a result row is the median over its rounds (``--rounds``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RESULT_KEYS = (
    "loader",
    "device",
    "batch_size",
    "samples_per_s",
    "batches_per_s",
    "wait_p50_ms",
    "wait_p95_ms",
    "stall_pct",
    "cpu_util_pct",
    "peak_rss_mb",
    "gpu_mem_peak_mb",
)
REPORT_KEYS = ("schema", "machine", "command", "date", "config", "results")

_COLUMNS = (
    ("loader", "loader", "{}"),
    ("device", "device", "{}"),
    ("cores", "cores", "{}"),
    ("batch", "batch_size", "{}"),
    ("samples/s", "samples_per_s", "{:.1f}"),
    ("spread %", "spread_pct", "{:.0f}"),
    ("x base", "vs_baseline", "{:.2f}"),
    ("batches/s", "batches_per_s", "{:.2f}"),
    ("wait p50 ms", "wait_p50_ms", "{:.1f}"),
    ("wait p95 ms", "wait_p95_ms", "{:.1f}"),
    ("step ms", "step_mean_ms", "{:.1f}"),
    ("stall %", "stall_pct", "{:.1f}"),
    ("cores busy", "cpu_cores_busy", "{:.2f}"),
    ("CPU %", "cpu_util_pct", "{:.0f}"),
    ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
    ("GPU MB", "gpu_mem_device_mb", "{:.0f}"),  # device-wide (DALI's pool too); see the schema
)


def _fmt(fmt: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def format_table(results: list[dict[str, Any]]) -> str:
    """A plain-text table of the results, one row per (cores, batch size, loader); "-" where a value is absent."""
    header = [c[0] for c in _COLUMNS]
    rows = [[_fmt(fmt, r.get(key)) for _, key, fmt in _COLUMNS] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _clean(value: Any) -> Any:
    # JSON has no NaN: write null
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: str | Path, report: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(report), indent=2) + "\n", encoding="utf-8")
    return path


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming what is missing when ``report`` does not follow the schema above."""
    missing = [k for k in REPORT_KEYS if k not in report]
    if missing:
        raise ValueError(f"benchmark report: missing top-level key(s) {missing}")
    for i, r in enumerate(report["results"]):
        missing = [k for k in RESULT_KEYS if k not in r]
        if missing:
            raise ValueError(f"benchmark report: results[{i}] misses key(s) {missing}")


COLOURS = {
    "cpu": "#4c72b0",
    "dali": "#76b900",
    "albumentations": "#dd8452",
    "albumentations-loop": "#c44e52",
    "kornia": "#8172b3",
}


def baseline_sentence(report: dict[str, Any]) -> str:
    """How the "x base" column reads, or why it is empty."""
    asked = report.get("config", {}).get("baseline")
    if report.get("baseline"):
        return f"x base: samples/s over the {report['baseline']} loader's, same cores and batch size"
    return f"no ratio: the baseline loader {asked!r} was not among --loaders" if asked else "no baseline"


def plot(path: str | Path, report: dict[str, Any], *, batch_size: int | None = None) -> Path:
    """Write a PNG: samples/s and stall % per loader (at ``batch_size``, on the most cores measured), and
    samples/s vs batch size when the report holds several batch sizes."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    most = max((r.get("cores") or 0 for r in results), default=0)
    results = [r for r in results if (r.get("cores") or 0) == most]
    sizes = sorted({r["batch_size"] for r in results})
    bs = batch_size if batch_size in sizes else sizes[-1]
    at_bs = [r for r in results if r["batch_size"] == bs]
    sweep = len(sizes) > 1
    panel = max(4.5, 1.3 * len(at_bs))  # room for every loader's bar and label
    fig, axes = plt.subplots(
        1, 3 if sweep else 2, figsize=(2 * panel + (5 if sweep else 0), 4.4), constrained_layout=True
    )
    colours = COLOURS
    labels = [f"{r['loader'].replace('-', '-' + chr(10))}\n({r['device']})" for r in at_bs]
    bar_colours = [colours.get(r["loader"], "#888888") for r in at_bs]

    ax = axes[0]
    values = [r["samples_per_s"] or 0.0 for r in at_bs]
    bars = ax.bar(labels, values, color=bar_colours)
    ratios = [f"{r['samples_per_s'] or 0:.1f}" + (f"\n{r['vs_baseline']:.2f}x" if r.get("vs_baseline") else "") for r in at_bs]
    ax.bar_label(bars, labels=ratios)
    ax.set_ylim(0, 1.2 * max(values, default=0.0) or 1.0)
    ax.set_ylabel("samples / s")
    ax.set_title(f"throughput, batch {bs}")

    ax = axes[1]
    if any(r.get("stall_pct") is not None for r in at_bs):
        values = [r["stall_pct"] if r.get("stall_pct") is not None else 0.0 for r in at_bs]
        bars = ax.bar(labels, values, color=bar_colours)
        ax.bar_label(bars, fmt="%.1f%%")
        ax.set_ylim(0, 105)
        ax.set_ylabel("data stall, % of step time")
        model = report.get("config", {}).get("model", "?")
        ax.set_title(f"stall under the training step (model: {model})")
    else:
        # no model: nothing stalls; show how long the loop waits for each batch instead
        x = np.arange(len(at_bs))
        for k, (key, name, alpha) in enumerate((("wait_p50_ms", "p50", 1.0), ("wait_p95_ms", "p95", 0.5))):
            values = [r.get(key) or 0.0 for r in at_bs]
            bars = ax.bar(x + (k - 0.5) * 0.38, values, 0.38, color=bar_colours, alpha=alpha, label=name)
            ax.bar_label(bars, fmt="%.0f")
        ax.set_xticks(x, labels)
        ax.set_ylabel("wait for the next batch, ms")
        ax.set_title("wait per batch (no model): p50, p95 light")

    if sweep:
        ax = axes[2]
        for name in sorted({r["loader"] for r in results}):
            pts = sorted((r["batch_size"], r["samples_per_s"] or 0.0) for r in results if r["loader"] == name)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name, color=colours.get(name))
        ax.set_xlabel("batch size")
        ax.set_ylabel("samples / s")
        ax.set_title("throughput vs batch size")
        ax.legend()
        ax.grid(alpha=0.3)

    machine = report.get("machine", {})
    fig.suptitle(
        f"fastload bench — {machine.get('cpu', '?')}, GPU: {machine.get('gpu') or 'none'}", fontsize=10
    )
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def cores_plot_path(path: str | Path) -> Path:
    """Where the samples/s-vs-cores chart goes next to the main chart: ``bench.png`` → ``bench-cores.png``."""
    path = Path(path)
    return path.with_name(f"{path.stem}-cores{path.suffix or '.png'}")


def plot_cores(path: str | Path, report: dict[str, Any], *, batch_size: int | None = None) -> Path:
    """Write a PNG of samples/s against the CPU cores the process tree had (``--cores``), one line per loader,
    at ``batch_size``: a CPU-bound loader climbs with the cores, one bound elsewhere stays flat."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    sizes = sorted({r["batch_size"] for r in results})
    bs = batch_size if batch_size in sizes else sizes[-1]
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    for name in dict.fromkeys(r["loader"] for r in results):
        pts = sorted((r["cores"], r["samples_per_s"] or 0.0) for r in results if r["loader"] == name and r["batch_size"] == bs)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name, color=COLOURS.get(name))
    ax.set_xticks(sorted({r["cores"] for r in results}))
    ax.set_xlabel("CPU cores (affinity of the whole process tree; workers = cores)")
    ax.set_ylabel("samples / s")
    ax.set_title(f"throughput vs CPU cores, batch {bs}")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.grid(alpha=0.3)
    machine = report.get("machine", {})
    fig.suptitle(f"fastload bench — {machine.get('cpu', '?')}, GPU: {machine.get('gpu') or 'none'}", fontsize=10)
    return _save(fig, path)
