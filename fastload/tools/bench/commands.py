"""``fastload bench``: argparse in, ``run_bench`` out."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from fastload.errors import ConfigError


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _loader_list(text: str) -> tuple[str, ...]:
    from fastload.tools.bench.run import LOADERS

    names = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [n for n in names if n not in LOADERS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown loader(s) {bad or text!r}; choose from {','.join(LOADERS)}"
        )
    return names


def _cores_list(text: str) -> tuple[int, ...]:
    from fastload.cores import usable_cores

    if text.strip() == "all":
        return (usable_cores(),)
    return _int_list(text)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure loader throughput and data stall under a training step",
        description="Measure loaders side by side under the same training step, in one process tree: fastload's "
        "(cpu: CpuLoader, dali: Loader) and the peers users run today (albumentations, albumentations-loop, "
        "kornia; pip install \"fastload[peers]\"). samples/s, wait for the next batch, data stall, CPU cores "
        "busy, memory, GPU memory, and the ratio to a baseline. Prints a table; writes JSON and a PNG chart.",
    )
    p.add_argument("--cache", required=True, help="cache directory (fastload cache build)")
    p.add_argument(
        "--config", default="default", help="augmentation YAML, or 'default' / 'none' (default: default)"
    )
    p.add_argument(
        "--loaders",
        type=_loader_list,
        default=("cpu", "dali"),
        help="comma-separated, any of: cpu (CpuLoader), dali (Loader; DALI's CPU graph without a GPU), "
        "albumentations (DataLoader + Albumentations + center_targets), albumentations-loop (the same with "
        "Panoptic-DeepLab's per-instance target loop, the usual starting point), kornia (Kornia batch "
        "augmentation on the device). Default: cpu,dali",
    )
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    p.add_argument("--steps", type=int, default=50, help="measured steps per loader (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="unmeasured steps first (default 5)")
    p.add_argument(
        "--workers", type=int, default=None, help="CpuLoader workers and DALI threads (default: all cores)"
    )
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument(
        "--model", choices=("none", "segnet"), default="segnet", help="segnet: train SegNet on each batch"
    )
    p.add_argument(
        "--precision", choices=("bf16", "fp32"), default="bf16", help="model autocast dtype (default bf16)"
    )
    p.add_argument("--width", type=int, default=32, help="SegNet first-stage channels (default 32)")
    p.add_argument(
        "--sweep", type=_int_list, default=None, metavar="B1,B2,...", help="also measure these batch sizes"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the loader list N times, round-robin, so machine noise hits every loader alike; the table "
        "shows medians and the spread of samples/s (default 1)",
    )
    p.add_argument(
        "--baseline",
        default="albumentations",
        help="the loader the others' samples/s are divided by (default albumentations; absent from --loaders: no ratio)",
    )
    p.add_argument(
        "--cores",
        type=_cores_list,
        default=None,
        metavar="N1,N2,...|all",
        help="sweep CPU cores: for each N, pin the whole process tree to N CPUs and give every loader N workers / "
        "threads (overrides --workers); with --plot, also writes <plot>-cores.png (samples/s vs cores)",
    )
    p.add_argument(
        "--read-latency-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="add MS milliseconds to every sample read, as a NAS would (storage planning; default 0)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.add_argument("--plot", default=None, help="write the PNG chart here")
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    from fastload.tools.bench.report import (
        baseline_sentence,
        cores_plot_path,
        format_table,
        plot,
        plot_cores,
        write_json,
    )
    from fastload.tools.bench.run import BenchConfig, dali_device_sentence, run_bench

    if not Path(args.cache).is_dir():
        raise ConfigError(f"--cache {args.cache!r} is not a directory; build one with `fastload cache build`")
    sizes = tuple(dict.fromkeys([*(args.sweep or ()), args.batch_size]))
    try:
        cfg = BenchConfig(
            cache=args.cache,
            augment=args.config,
            loaders=args.loaders,
            batch_sizes=tuple(sorted(sizes)),
            size=tuple(args.size),
            steps=args.steps,
            warmup=args.warmup,
            workers=args.workers,
            device=args.device,
            model=args.model,
            precision=args.precision,
            width=args.width,
            seed=args.seed,
            prefetch=args.prefetch,
            rounds=args.rounds,
            cores=tuple(sorted(set(args.cores))) if args.cores else None,
            baseline=args.baseline,
            read_latency_ms=args.read_latency_ms,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    command = (
        shlex.join(["fastload", *sys.argv[1:]])
        # `fastload ...` or `python -m fastload ...`; not another program's __main__ (python -m pytest)
        if Path(sys.argv[0]).name == "fastload" or Path(sys.argv[0]).parent.name == "fastload"
        else None
    )
    report = run_bench(cfg, command=command, log=lambda msg: print(msg, file=sys.stderr))
    print(format_table(report["results"]))
    print(baseline_sentence(report))
    if cfg.read_latency_ms:
        print(f"every sample read took {cfg.read_latency_ms:g} ms longer than the disk's (--read-latency-ms), as on a NAS")
    sentence = dali_device_sentence(report)
    if sentence:
        print(sentence)
    if args.out:
        print(f"wrote {write_json(args.out, report)}")
    if args.plot:
        print(f"wrote {plot(args.plot, report, batch_size=args.batch_size)}")
        if cfg.cores and len(cfg.cores) > 1:
            print(f"wrote {plot_cores(cores_plot_path(args.plot), report, batch_size=args.batch_size)}")
    return 0
