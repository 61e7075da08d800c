"""``fastload demo``: the whole path in one command, small enough for a 2-core laptop without a GPU.

synthetic COCO (or the real sample photos, or yours) → cache → both loaders benchmarked under SegNet → show grid +
benchmark chart. ``--data synthetic`` (the default, the fastest) generates textured images; ``--data sample`` uses
the 18 real photos fastload ships (``fastload.sample_data()``); ``--coco/--images`` use your own COCO set.
Everything lands in one folder (``--out``, default ``fastload-demo``):

    data/          the synthetic COCO dataset (annotations.json, images/), with --data synthetic only
    cache/         the cache built from it
    bench.json     the benchmark report (schema: fastload.tools.bench.report)
    bench.png      samples/s and data stall per loader
    show.png       augmented samples with their masks and maps, cpu and dali rows side by side
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastload.errors import ConfigError

DATA_CHOICES = ("synthetic", "sample")
SAMPLE_DESCRIPTION = "18 real 800x600 photos with 165 hand-drawn polygons that fastload ships (fruits_nuts_coco, MIT)"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo: the defaults are small enough for a 2-core CPU without a GPU."""

    n: int = 48  # synthetic images
    image_size: tuple[int, int] = (320, 320)  # synthetic image (H, W)
    size: tuple[int, int] = (128, 128)  # loader output for the benchmark (H, W)
    batch_size: int = 8
    steps: int = 20  # measured steps per loader
    warmup: int = 3
    width: int = 16  # SegNet first-stage channels
    show_n: int = 6  # samples in the show grid
    show_size: tuple[int, int] = (256, 256)
    workers: int | None = None  # default: every usable core
    device: str = "auto"
    seed: int = 0


@dataclass(frozen=True)
class DemoResult:
    out: Path
    coco: Path
    cache: Path
    bench_json: Path
    bench_png: Path
    show_png: Path
    report: dict[str, Any]
    seconds: dict[str, float]


def _clear_cache_dir(path: Path) -> None:
    # the demo owns out/cache; refuse to delete a folder that does not look like a cache
    if not path.exists():
        return
    names = {p.name for p in path.iterdir()}
    if names and not any(n == "manifest.json" or n.startswith("shard-") for n in names):
        raise ConfigError(f"{path} exists and is not a fastload cache; choose another --out")
    shutil.rmtree(path)


@contextmanager
def _timed(seconds: dict[str, float], step: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[step] = time.perf_counter() - start


def given_dataset(
    coco: str | Path | None, images: str | Path | None, data: str, log: Callable[[str], None]
) -> tuple[Path | None, Path | None]:
    """The COCO file and image folder to use: the user's, the bundled sample photos, or (None, None): make one."""
    if (coco is None) != (images is None):
        raise ConfigError("give both --coco and --images, or neither (then a synthetic dataset is made)")
    if data not in DATA_CHOICES:
        raise ConfigError(f"data must be one of {list(DATA_CHOICES)}, got {data!r}")
    if coco is None and data == "sample":
        from fastload import sample_data

        coco, images = sample_data() / "annotations.json", sample_data() / "images"
        log(f"demo: using the {SAMPLE_DESCRIPTION} in {sample_data()}")
    return (Path(coco), Path(images)) if coco is not None else (None, None)


def synth_dataset(out: Path, s: DemoSettings, log: Callable[[str], None]) -> tuple[Path, Path]:
    """Write the synthetic COCO set under ``out/data``; returns (annotations JSON, image folder)."""
    from fastload.build.synth import synth_coco

    log(f"demo: writing {s.n} synthetic {s.image_size[0]}x{s.image_size[1]} images to {out / 'data'}")
    coco = synth_coco(out=out / "data", n=s.n, size=s.image_size, instances=(3, 8), seed=s.seed)
    return coco, out / "data" / "images"


def build_demo_cache(out: Path, coco: Path, images: Path, log: Callable[[str], None]) -> Path:
    """Build ``out/cache`` from the dataset (replacing the cache a previous demo left there); returns its path."""
    from fastload import build_cache
    from fastload.cores import usable_cores

    cache = out / "cache"
    _clear_cache_dir(cache)
    log(f"demo: building the cache {cache}")
    build_cache(coco=coco, images=images, out=cache, workers=min(2, usable_cores()), progress=False)
    return cache


def bench_both_loaders(
    cache: Path, out: Path, s: DemoSettings, log: Callable[[str], None]
) -> tuple[dict[str, Any], Path, Path]:
    """Benchmark the cpu and dali loaders under SegNet; returns (the report, ``out/bench.json``, ``out/bench.png``)."""
    from fastload.tools.bench.report import plot, write_json
    from fastload.tools.bench.run import BenchConfig, run_bench

    cfg = BenchConfig(
        cache=str(cache),
        augment="default",
        loaders=("cpu", "dali"),
        batch_sizes=(s.batch_size,),
        size=s.size,
        steps=s.steps,
        warmup=s.warmup,
        workers=s.workers,
        device=s.device,
        model="segnet",
        precision="bf16",
        width=s.width,
        seed=s.seed,
    )
    report = run_bench(cfg, log=log)
    return report, write_json(out / "bench.json", report), plot(out / "bench.png", report, batch_size=s.batch_size)


def show_both_loaders(cache: Path, out: Path, s: DemoSettings, log: Callable[[str], None]) -> Path:
    """Render ``out/show.png``: ``s.show_n`` samples, the cpu and dali rows of each side by side."""
    from fastload.tools.show import show

    log("demo: rendering the show grid (cpu and dali rows of the same samples)")
    return show(
        str(cache), out / "show.png", n=s.show_n, loader="both", size=s.show_size, seed=s.seed, device=s.device
    )


def _log_summary(result: DemoResult, log: Callable[[str], None]) -> None:
    from fastload.tools.bench.report import format_table
    from fastload.tools.bench.run import dali_device_sentence

    log("")
    log(format_table(result.report["results"]))
    log("")
    log(dali_device_sentence(result.report) or "")
    log(f"dataset:     {result.coco}")
    log(f"cache:       {result.cache}")
    log(f"benchmark:   {result.bench_json}  (chart: {result.bench_png})")
    log(f"show grid:   {result.show_png}")
    log(f"same benchmark again:  {result.report['command']}")
    log("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()))


def run_demo(
    out: str | Path = "fastload-demo",
    *,
    coco: str | Path | None = None,
    images: str | Path | None = None,
    data: str = "synthetic",
    settings: DemoSettings = DemoSettings(),
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo's steps (dataset, cache, benchmark, show grid); see the module docstring for what is written
    where. ``result.seconds`` holds each step's wall time."""
    coco, images = given_dataset(coco, images, data, log)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    if coco is None:
        with _timed(seconds, "synth"):
            coco, images = synth_dataset(out, settings, log)
    with _timed(seconds, "cache"):
        cache = build_demo_cache(out, coco, images, log)
    with _timed(seconds, "bench"):
        report, bench_json, bench_png = bench_both_loaders(cache, out, settings, log)
    with _timed(seconds, "show"):
        show_png = show_both_loaders(cache, out, settings, log)
    result = DemoResult(out, coco, cache, bench_json, bench_png, show_png, report, seconds)
    _log_summary(result, log)
    return result


def register(sub: argparse._SubParsersAction) -> None:
    d = DemoSettings()
    p = sub.add_parser(
        "demo",
        help="synthetic data → cache → benchmark both loaders → pictures, in a few minutes on a CPU",
        description="Make a synthetic COCO dataset (or use the bundled real photos with --data sample, or your own "
        "with --coco/--images), build the cache, benchmark the CPU and DALI loaders under a small segmentation network, render the show grid and the benchmark chart.",
    )
    p.add_argument("--out", default="fastload-demo", help="output folder (default fastload-demo)")
    p.add_argument(
        "--data",
        choices=DATA_CHOICES,
        default="synthetic",
        help="synthetic: generated images (default, fastest); sample: the real photos fastload ships",
    )
    p.add_argument("--coco", default=None, help="a COCO instances JSON to use instead of --data")
    p.add_argument("--images", default=None, help="the folder the COCO file_name entries are relative to")
    p.add_argument("--n", type=int, default=d.n, help=f"synthetic images (default {d.n})")
    p.add_argument("--image-size", type=int, nargs=2, default=d.image_size, metavar=("H", "W"))
    p.add_argument(
        "--size", type=int, nargs=2, default=d.size, metavar=("H", "W"), help="benchmark output size"
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument(
        "--steps", type=int, default=d.steps, help=f"measured steps per loader (default {d.steps})"
    )
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--width", type=int, default=d.width, help="SegNet first-stage channels")
    p.add_argument("--show-n", type=int, default=d.show_n)
    p.add_argument("--show-size", type=int, nargs=2, default=d.show_size, metavar=("H", "W"))
    p.add_argument("--workers", type=int, default=None, help="loader workers/threads (default: all cores)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    try:
        settings = DemoSettings(
            n=args.n,
            image_size=tuple(args.image_size),
            size=tuple(args.size),
            batch_size=args.batch_size,
            steps=args.steps,
            warmup=args.warmup,
            width=args.width,
            show_n=args.show_n,
            show_size=tuple(args.show_size),
            workers=args.workers,
            device=args.device,
            seed=args.seed,
        )
        t = time.perf_counter()
        run_demo(args.out, coco=args.coco, images=args.images, data=args.data, settings=settings, log=print)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from exc
    print(f"demo finished in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return 0
