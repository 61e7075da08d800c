"""``run_bench``: both loaders side by side under the same training step, in one process, one after the other."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from fastload.bench.measure import measure
from fastload.bench.sysinfo import machine_info, now_iso
from fastload.cores import usable_cores

LOADERS = ("cpu", "dali")
MODELS = ("none", "segnet")
DEVICES = ("auto", "cuda", "cpu")


@dataclass(frozen=True)
class BenchConfig:
    """What ``fastload bench`` measures. Keyword-only; every field is written to the JSON ``config``.

    cache : cache directory
    augment : augmentation config: a YAML path, "default" or "none"
    loaders : names from LOADERS, run in this order
    batch_sizes : each loader is measured at each batch size
    size : output (height, width)
    steps, warmup : measured steps, and unmeasured steps before them
    workers : CpuLoader worker processes and DALI num_threads (None: every usable core)
    device : "auto" | "cuda" | "cpu", passed to the loaders; the model runs where the loader delivers
    model : "segnet" trains SegNet on each batch; "none" measures the loader alone
    precision : "bf16" (autocast) | "fp32", for the model
    width : SegNet's first-stage channels
    """

    cache: str
    augment: str = "default"
    loaders: tuple[str, ...] = LOADERS
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
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [name for name in self.loaders if name not in LOADERS]
        if bad or not self.loaders:
            raise ValueError(
                f"bench: unknown loader(s) {bad or self.loaders}; choose from {', '.join(LOADERS)}"
            )
        if self.model not in MODELS:
            raise ValueError(f"bench: model must be one of {MODELS}, got {self.model!r}")
        if self.device not in DEVICES:
            raise ValueError(f"bench: device must be one of {DEVICES}, got {self.device!r}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"bench: batch sizes must be >= 1, got {self.batch_sizes}")
        if self.steps < 1 or self.warmup < 0:
            raise ValueError(
                f"bench: need steps >= 1 and warmup >= 0, got steps={self.steps} warmup={self.warmup}"
            )
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"bench: workers must be >= 1, got {self.workers}")
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
        return shlex.join(argv)


LoaderFactory = Callable[..., Any]


def make_loader(name: str, cfg: BenchConfig, batch_size: int) -> Any:
    """``fastload.CpuLoader`` ("cpu") or ``fastload.Loader`` ("dali") for one measurement."""
    import fastload
    from fastload.show import dali_device

    cls = {"cpu": fastload.CpuLoader, "dali": fastload.Loader}[name]
    return cls(
        cfg.cache,
        batch_size=batch_size,
        shuffle=True,
        seed=cfg.seed,
        drop_last=False,
        size=tuple(cfg.size),
        augment=cfg.augment,
        device=dali_device(cfg.device) if name == "dali" else cfg.device,  # "dali" measures DALI, GPU or not
        num_threads=cfg.resolved_workers,
        prefetch=cfg.prefetch,
    )


def foreground_classes(cache: str) -> int:
    """K, the cache's foreground classes (the manifest's ``num_classes`` counts background too)."""
    from fastload.cache.reader import open_cache

    return int(open_cache(cache).manifest.num_classes) - 1


def run_bench(
    cfg: BenchConfig,
    *,
    command: str | None = None,
    loader_factory: LoaderFactory = make_loader,
    num_classes: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure every loader at every batch size; return the report dict (schema: fastload.bench.report)."""
    from fastload.bench.model import TrainStep

    if cfg.model == "segnet" and num_classes is None:
        num_classes = foreground_classes(cfg.cache)
    results = []
    for batch_size in cfg.batch_sizes:
        for name in cfg.loaders:
            log(
                f"bench: {name} loader, batch {batch_size}: {cfg.warmup} warm-up + {cfg.steps} measured steps ..."
            )
            loader = loader_factory(name, cfg, batch_size)
            try:
                device = torch.device(loader.device)
                step = None
                if cfg.model == "segnet" and device.type == "cpu" and cfg.precision == "bf16":
                    _warn_cpu_bf16(log)
                if cfg.model == "segnet":
                    step = TrainStep(
                        num_classes, device, width=cfg.width, precision=cfg.precision, seed=cfg.seed
                    )
                m = measure(loader, step, steps=cfg.steps, warmup=cfg.warmup, device=device)
            finally:
                loader.close()
            results.append(
                {
                    "loader": name,
                    "device": str(device),
                    "batch_size": batch_size,
                    "workers": cfg.resolved_workers,
                    "model": cfg.model,
                    "precision": cfg.precision if cfg.model != "none" else None,
                    **m,
                }
            )
            del step
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {
        "schema": 1,
        "machine": machine_info(),
        "command": command or cfg.command(),
        "date": now_iso(),
        "config": cfg.to_json(),
        "results": results,
    }


_warned: set[str] = set()


def _warn_cpu_bf16(log: Callable[[str], None]) -> None:
    from fastload.bench.sysinfo import cpu_has_native_bf16

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
