"""Print the README's results table (Markdown) from the benchmark reports in benchmarks/results/*.json.

    python benchmarks/results_table.py [DIR ...]

One row per (report, cores, batch size, loader): machine, loader, device, batch, samples/s (the median over
``--rounds``, with the spread), stall %, the ratio to the report's baseline loader, wait p50/p95, CPU cores busy,
peak RSS, device-wide GPU memory, the command that produced it, date. Older reports (before peers, rounds and
core sweeps) render with "-" where they have no value. Reports are the JSON files ``fastload bench --out`` writes (schema: fastload.tools.bench.report);
other JSON files in the folder are skipped with a note on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
HEADER = (
    "machine",
    "loader",
    "device",
    "batch",
    "samples/s",
    "stall %",
    "x baseline",
    "cores",
    "wait p50/p95 ms",
    "cores busy",
    "peak RSS MB",
    "GPU MB",
    "command",
    "date",
)


def machine_label(machine: dict[str, Any]) -> str:
    cores = machine.get("cores_usable") or machine.get("cores_logical")
    cpu = f"{machine.get('cpu', '?')} ({cores} cores)" if cores else str(machine.get("cpu", "?"))
    return f"{machine['gpu']} + {cpu}" if machine.get("gpu") else f"{cpu}, no GPU"


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    machine = machine_label(report.get("machine", {}))
    command = report.get("command", "")
    date = str(report.get("date", ""))[:10]
    baseline = report.get("baseline")
    out = []
    for r in report.get("results", []):
        rate = _num(r.get("samples_per_s"), ".1f")
        if (r.get("rounds") or 1) > 1 and r.get("spread_pct") is not None:
            lo, hi = r.get("samples_per_s_min"), r.get("samples_per_s_max")
            rate += f" ({_num(lo, '.1f')}–{_num(hi, '.1f')}, {r['rounds']} rounds)"
        ratio = _num(r.get("vs_baseline"), ".2f")
        out.append(
            (
                machine,
                r["loader"],
                r["device"],
                str(r["batch_size"]),
                rate,
                _num(r.get("stall_pct"), ".1f"),
                f"{ratio}× {baseline}" if r.get("vs_baseline") is not None else "-",
                str(r.get("cores") or r.get("workers") or "-"),
                f"{_num(r.get('wait_p50_ms'), '.0f')} / {_num(r.get('wait_p95_ms'), '.0f')}",
                _num(r.get("cpu_cores_busy"), ".2f"),
                _num(r.get("peak_rss_mb"), ".0f"),
                _num(r.get("gpu_mem_device_mb", r.get("gpu_mem_peak_mb")), ".0f"),
                f"`{command}`" if command else "",
                date,
            )
        )
    return out


def load_reports(dirs: list[Path]) -> list[dict[str, Any]]:
    reports = []
    for d in dirs:
        for path in sorted(d.glob("*.json")):
            try:
                report = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                print(f"skipping {path}: {exc}", file=sys.stderr)
                continue
            if not isinstance(report, dict) or "results" not in report or "machine" not in report:
                print(f"skipping {path}: not a fastload bench report", file=sys.stderr)
                continue
            reports.append(report)
    return reports


def markdown(reports: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    for report in reports:
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows(report)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    dirs = [Path(a) for a in args] or [RESULTS]
    reports = load_reports(dirs)
    if not reports:
        print(f"no benchmark reports in {', '.join(map(str, dirs))}", file=sys.stderr)
    print(markdown(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
