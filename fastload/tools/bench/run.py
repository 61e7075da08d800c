"""``run_bench``: fastload's loaders and the peers side by side under the same training step, in one process tree.

Every measurement makes a fresh loader, warms it up, measures it and closes it. The order is

    for cores in the --cores sweep (or just the usable cores):      restrict the process tree's CPUs, workers = cores
        for round in 1..rounds:                                      interleaved, so noise hits every loader alike
            for batch_size in batch_sizes:
                for loader in loaders:                               measure

and the report's ``results`` hold one row per (cores, batch size, loader): the median over the rounds of each
number (``runs`` keeps every single measurement), the spread of samples/s, and the ratio to the baseline loader.
"""

from __future__ import annotations

import dataclasses
import shlex
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from fastload.cores import usable_cores
from fastload.tools.bench.affinity import limited_cores
from fastload.tools.bench.measure import device_used_bytes, measure
from fastload.tools.bench.peers import PEERS
from fastload.tools.bench.sysinfo import machine_info, now_iso
from fastload.validation import check_int

MAX_STEPS = 100_000  # steps (or warm-up steps) of one measurement

LOADERS = ("cpu", "dali", *PEERS)
DEFAULT_LOADERS = ("cpu", "dali")
DEFAULT_BASELINE = "albumentations"
MODELS = ("none", "segnet")
DEVICES = ("auto", "cuda", "cpu")


@dataclass(frozen=True)
class BenchConfig:
    """What ``fastload bench`` measures. Keyword-only; every field is written to the JSON ``config``.

    cache : cache directory
    augment : augmentation config: a YAML path, "default" or "none"
    loaders : names from LOADERS, run in this order (the peers: fastload.tools.bench.peers)
    batch_sizes : each loader is measured at each batch size
    size : output (height, width)
    steps, warmup : measured steps, and unmeasured steps before them
    workers : CpuLoader worker processes and DALI num_threads (None: every usable core)
    device : "auto" | "cuda" | "cpu", passed to the loaders; the model runs where the loader delivers
    model : "segnet" trains SegNet on each batch; "none" measures the loader alone
    precision : "bf16" (autocast) | "fp32", for the model
    width : SegNet's first-stage channels
    rounds : repetitions of the whole loader list, interleaved; results are medians over them
    cores : CPU counts to sweep (the process tree's affinity, and workers = cores); None: no restriction
    baseline : the loader the others' samples/s are divided by (absent from ``loaders``: no ratio)
    """

    cache: str
    augment: str = "default"
    loaders: tuple[str, ...] = DEFAULT_LOADERS
    batch_sizes: tuple[int, ...] = (48,)
    size: tuple[int, int] = (512, 512)
    steps: int = 50
    warmup: int = 5
    workers: int | None = None
    device: str = "auto"
    model: str = "segnet"
    precision: str = "bf16"
    width: int = 32
    seed: int = 0
    prefetch: int = 2
    rounds: int = 1
    cores: tuple[int, ...] | None = None
    baseline: str = DEFAULT_BASELINE
    read_latency_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (isinstance(self.read_latency_ms, (int, float)) and 0 <= self.read_latency_ms < float("inf")):
            raise ValueError(f"bench: read latency must be >= 0 ms, got {self.read_latency_ms!r}")
        bad = [name for name in self.loaders if name not in LOADERS]
        if bad or not self.loaders:
            raise ValueError(
                f"bench: unknown loader(s) {bad or self.loaders}; choose from {', '.join(LOADERS)}"
            )
        if self.model not in MODELS:
            raise ValueError(f"bench: model must be one of {MODELS}, got {self.model!r}")
        if self.device not in DEVICES:
            raise ValueError(f"bench: device must be one of {DEVICES}, got {self.device!r}")
        if not self.batch_sizes:
            raise ValueError("bench: no batch size given")
        for batch_size in self.batch_sizes:
            check_int("bench: batch size", batch_size, 1, error=ValueError)
        # a step's CUDA timing events are made before the run: bounded, as a benchmark's length needs no more
        check_int("bench: steps", self.steps, 1, MAX_STEPS, error=ValueError)
        check_int("bench: warmup", self.warmup, 0, MAX_STEPS, error=ValueError)
        if self.workers is not None:
            check_int("bench: workers", self.workers, 1, error=ValueError)
        check_int("bench: rounds", self.rounds, 1, error=ValueError)
        if self.baseline not in LOADERS:
            raise ValueError(f"bench: unknown baseline {self.baseline!r}; choose from {', '.join(LOADERS)}")
        if self.cores is not None:
            if not self.cores:
                raise ValueError("bench: cores: give at least one CPU count, or None for no restriction")
            for cores in self.cores:
                check_int("bench: cores", cores, 1, usable_cores(), error=ValueError, why="the CPUs this process may use")
        if self.model == "segnet" and (self.size[0] % 16 or self.size[1] % 16):
            raise ValueError(f"bench: with --model segnet the size must be divisible by 16, got {self.size}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        d["workers"] = self.resolved_workers
        d.update(self.extra)
        return d

    @property
    def resolved_workers(self) -> int:
        return self.workers if self.workers is not None else usable_cores()

    def command(self) -> str:
        """The ``fastload bench`` command line that runs this configuration."""
        argv = ["fastload", "bench", "--cache", self.cache, "--config", self.augment]
        argv += ["--loaders", ",".join(self.loaders), "--batch-size", str(self.batch_sizes[-1])]
        if len(self.batch_sizes) > 1:
            argv += ["--sweep", ",".join(map(str, self.batch_sizes))]
        argv += ["--size", str(self.size[0]), str(self.size[1]), "--steps", str(self.steps)]
        argv += [
            "--warmup",
            str(self.warmup),
            "--workers",
            str(self.resolved_workers),
            "--device",
            self.device,
        ]
        argv += ["--model", self.model, "--precision", self.precision, "--width", str(self.width)]
        argv += ["--seed", str(self.seed)]
        if self.rounds != 1:
            argv += ["--rounds", str(self.rounds)]
        if self.cores is not None:
            argv += ["--cores", ",".join(map(str, self.cores))]
        if self.baseline != DEFAULT_BASELINE:
            argv += ["--baseline", self.baseline]
        if self.read_latency_ms:
            argv += ["--read-latency-ms", f"{self.read_latency_ms:g}"]
        return shlex.join(argv)


LoaderFactory = Callable[..., Any]


def make_loader(name: str, cfg: BenchConfig, batch_size: int) -> Any:
    """``fastload.CpuLoader`` ("cpu"), ``fastload.Loader`` ("dali") or a peer (fastload.tools.bench.peers) for one
    measurement; every one gets ``cfg.resolved_workers`` worker processes or threads."""
    cache: Any = cfg.cache
    if cfg.read_latency_ms:
        # storage planning: every sample read takes this much longer, as on a NAS (fastload.tools.bench.storage)
        from fastload.tools.bench.storage import DelayedCache

        cache = DelayedCache.from_ms(cfg.cache, cfg.read_latency_ms)
    try:
        loader = _make(name, cfg, batch_size, cache)
    except BaseException:
        if cache is not cfg.cache:
            cache.close()
        raise
    if cache is not cfg.cache:
        loader._bench_cache = cache  # a loader does not close a cache it was handed: _measure_one does
    return loader


def _make(name: str, cfg: BenchConfig, batch_size: int, cache: Any) -> Any:
    from fastload.tools.loaders import fastload_loader

    # every loader alike: shuffled, the last batch kept, cfg.resolved_workers worker processes or threads
    same = dict(
        batch_size=batch_size,
        shuffle=True,
        drop_last=False,
        size=tuple(cfg.size),
        augment=cfg.augment,
        device=cfg.device,
        seed=cfg.seed,
        prefetch=cfg.prefetch,
    )
    if name in PEERS:
        from fastload.tools.bench.peers import make_peer

        return make_peer(name, cache, num_workers=cfg.resolved_workers, **same)
    return fastload_loader(name, cache, num_threads=cfg.resolved_workers, **same)  # "dali": DALI, GPU or not


def cache_num_classes(cache: str) -> int:
    """K + 1, the cache's classes with background: the logits SegNet needs."""
    from fastload.cache.manifest import load_manifest

    return load_manifest(cache).num_classes  # the manifest alone: no shard index parsed


def run_bench(
    cfg: BenchConfig,
    *,
    command: str | None = None,
    loader_factory: LoaderFactory = make_loader,
    num_classes: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure every loader at every batch size (and core count), ``cfg.rounds`` times interleaved; return the
    report dict (schema: fastload.tools.bench.report)."""
    if loader_factory is make_loader:  # a missing peer library is said before anything is measured
        from fastload.tools.bench.peers import require_peer

        for name in cfg.loaders:
            if name in PEERS:
                require_peer(name)
    if cfg.model == "segnet" and num_classes is None:
        num_classes = cache_num_classes(cfg.cache)
    runs = []
    for cores in cfg.cores or (None,):
        at = cfg if cores is None else dataclasses.replace(cfg, workers=cores)
        with limited_cores(cores):
            for round_ in range(cfg.rounds):
                for batch_size in cfg.batch_sizes:
                    for name in cfg.loaders:
                        where = f"{name} loader, batch {batch_size}" + (f", {cores} cores" if cores else "")
                        if cfg.rounds > 1:
                            where += f", round {round_ + 1}/{cfg.rounds}"
                        log(f"bench: {where}: {cfg.warmup} warm-up + {cfg.steps} measured steps ...")
                        row = _measure_one(name, at, batch_size, num_classes, loader_factory, log)
                        runs.append({**row, "cores": cores or usable_cores(), "round": round_})
    return {
        "schema": 1,
        "machine": machine_info(),
        "command": command or cfg.command(),
        "date": now_iso(),
        "config": cfg.to_json(),
        "baseline": cfg.baseline if cfg.baseline in cfg.loaders else None,
        "results": summarise(runs, cfg.baseline),
        "runs": runs,
    }


def _measure_one(
    name: str,
    cfg: BenchConfig,
    batch_size: int,
    num_classes: int | None,
    loader_factory: LoaderFactory,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from fastload.tools.bench.model import TrainStep

    # device-wide GPU memory before the loader exists: what it adds (DALI's own pool too) is the peak above this
    gpu = cfg.device != "cpu" and torch.cuda.is_available()
    if gpu:
        torch.cuda.synchronize()
    before = device_used_bytes(torch.device("cuda", torch.cuda.current_device())) if gpu else None
    loader = loader_factory(name, cfg, batch_size)
    step = None
    try:
        device = torch.device(loader.device)
        if cfg.model == "segnet" and device.type == "cpu" and cfg.precision == "bf16":
            _warn_cpu_bf16(log)
        if cfg.model == "segnet":
            step = TrainStep(num_classes, device, width=cfg.width, precision=cfg.precision, seed=cfg.seed)
        m = measure(loader, step, steps=cfg.steps, warmup=cfg.warmup, device=device, gpu_before_bytes=before)
    finally:
        loader.close()
        delayed = getattr(loader, "_bench_cache", None)
        if delayed is not None:
            delayed.close()
    del step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "loader": name,
        "device": str(device),
        "batch_size": batch_size,
        "workers": cfg.resolved_workers,
        "model": cfg.model,
        "precision": cfg.precision if cfg.model != "none" else None,
        **m,
    }


def summarise(runs: list[dict[str, Any]], baseline: str | None) -> list[dict[str, Any]]:
    """One row per (cores, batch size, loader), in first-run order: every number the median over its rounds,
    plus ``rounds``, ``samples_per_s_rounds`` / ``_min`` / ``_max``, ``spread_pct`` ((max − min) / median) and
    ``vs_baseline`` (samples/s over the baseline's at the same cores and batch size; None without it)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["cores"], r["batch_size"], r["loader"]), []).append(r)
    rows = []
    for members in groups.values():
        row = {k: v for k, v in members[0].items() if k != "round"}
        for key, value in members[0].items():
            values = [m.get(key) for m in members]
            # measured numbers are floats; ints (batch size, workers, steps, cores) name the row
            if isinstance(value, float) and all(isinstance(v, (int, float)) for v in values):
                row[key] = statistics.median(values)
        rates = [m["samples_per_s"] for m in members]
        row.update(
            rounds=len(members),
            samples_per_s_rounds=rates,
            samples_per_s_min=min(rates),
            samples_per_s_max=max(rates),
            spread_pct=100.0 * (max(rates) - min(rates)) / row["samples_per_s"] if row["samples_per_s"] else None,
        )
        rows.append(row)
    base = {(r["cores"], r["batch_size"]): r["samples_per_s"] for r in rows if r["loader"] == baseline}
    for r in rows:
        b = base.get((r["cores"], r["batch_size"]))
        r["vs_baseline"] = r["samples_per_s"] / b if b else None
    return rows


_warned: set[str] = set()


def _warn_cpu_bf16(log: Callable[[str], None]) -> None:
    from fastload.tools.bench.sysinfo import cpu_has_native_bf16

    if "bf16" in _warned or cpu_has_native_bf16():
        return
    _warned.add("bf16")
    log(
        "bench: note: this CPU has no bf16 hardware (AVX512-BF16/AMX), so SegNet under bf16 autocast runs "
        "emulated, ~10x slower than fp32; the stall measured against it is lower than a GPU would show. "
        "--precision fp32 or --model none measure the loaders with less compute."
    )


def dali_device_sentence(report: dict[str, Any]) -> str | None:
    """'DALI ran on the GPU (NVIDIA H100)' or 'DALI ran on the CPU: no CUDA GPU visible', or None without DALI."""
    rows = [r for r in report["results"] if r["loader"] == "dali"]
    if not rows:
        return None
    gpu = report["machine"].get("gpu")
    if rows[0]["device"].startswith("cuda"):
        return f"DALI ran on the GPU ({gpu})"
    if not gpu:
        return "DALI ran on the CPU: no CUDA GPU visible"
    return f"DALI ran on the CPU, as asked (--device cpu), although a GPU is visible ({gpu})"
