"""The measuring harness: run a loader under a training step and time where the loop waits.

One measured step is

    wait  = next(loader)                     (NVTX "fastload/wait_for_data")
    h2d   = move the batch to the model's device, if the loader did not   ("fastload/host_to_device")
    step  = the training step                ("fastload/step")

Timing rules (what is synchronised, and why):

* On the CPU everything is synchronous, so host wall-clock times are the truth: stall = Σ(wait + h2d) / Σ(wait +
  h2d + step).
* On CUDA the step only enqueues kernels; the host returns at once and goes on to fetch the next batch while the
  GPU computes, so host-side ``wait`` overlaps compute and overstates the stall. There we record a CUDA event
  before and after each step on the current stream, and the stall is the GPU's idle time between steps:
  Σ gap(end_{i-1} → start_i) / (end_last − start_0). The host never waits for the GPU inside the loop (the loss is
  not read back); ``torch.cuda.synchronize()`` is called once after the warm-up and once after the last step, so
  that the wall time and the events are complete. ``stall_method`` in the result says which rule was used.
* Without a step (``--model none``) there is nothing to stall: ``stall_pct`` is None and only throughput and
  waits are meaningful (``host_stall_pct`` is still reported, and is ~100 %).

Resources are sampled by a background thread over the whole process tree (the loop's process and every
descendant, e.g. DataLoader workers): CPU time (user + system) and the sum of resident set sizes (which counts
pages shared between forked workers once per process, so it is an upper bound). On CUDA it also samples the
device-wide GPU memory in use (NVML through ``pynvml`` when installed, else ``torch.cuda.mem_get_info``), which
counts what torch's allocator does not see: DALI's own memory pool, other libraries, the CUDA context.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import psutil
import torch

from fastload.errors import FastloadError
from fastload.tools.bench.ranges import H2D, STEP, WAIT, nvtx_range
from fastload.validation import check_int

StepFn = Callable[[dict[str, torch.Tensor]], Any]


class EpochLoader(Protocol):
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]: ...
    def set_epoch(self, epoch: int) -> None: ...


class ProcessTreeSampler:
    """Samples CPU time and RSS of a process and all its descendants every ``interval`` seconds.

    ``cpu_seconds()`` is cumulative over every process seen since ``start()`` (a worker that exits keeps the
    CPU time it was last seen with), so the difference of two readings is the tree's CPU time in between.
    """

    def __init__(self, pid: int | None = None, *, interval: float = 0.1, gpu: torch.device | None = None) -> None:
        self._root = psutil.Process(pid)
        self._gpu = gpu
        self._peak_gpu = 0
        self._interval = interval
        self._cpu: dict[int, float] = {}
        self._base: dict[int, float] = {}
        self._peak_rss = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _processes(self) -> list[psutil.Process]:
        try:
            return [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def sample(self) -> None:
        """Take one reading now (also called by the thread)."""
        rss = 0
        seen: dict[int, float] = {}
        for proc in self._processes():
            try:
                with proc.oneshot():
                    t = proc.cpu_times()
                    seen[proc.pid] = t.user + t.system
                    rss += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        gpu_used = device_used_bytes(self._gpu) if self._gpu is not None else 0
        with self._lock:
            self._peak_gpu = max(self._peak_gpu, gpu_used)
            for pid, cpu in seen.items():
                # a process first seen after start() began at 0 s; one seen at start() counts from there
                self._base.setdefault(pid, 0.0 if self._thread is not None else cpu)
                self._cpu[pid] = cpu
            self._peak_rss = max(self._peak_rss, rss)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def start(self) -> ProcessTreeSampler:
        self.sample()  # processes alive now count from their current CPU time
        self._thread = threading.Thread(target=self._run, name="fastload-bench-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def cpu_seconds(self) -> float:
        self.sample()
        with self._lock:
            return sum(cpu - self._base.get(pid, 0.0) for pid, cpu in self._cpu.items())

    def peak_rss_bytes(self) -> int:
        with self._lock:
            return self._peak_rss

    def peak_gpu_bytes(self) -> int:
        """The most device-wide GPU memory in use at any reading (0 without a GPU to watch)."""
        with self._lock:
            return self._peak_gpu

    def reset_peak(self) -> None:
        with self._lock:
            self._peak_rss = 0
            self._peak_gpu = 0


def device_used_bytes(device: torch.device) -> int:
    """GPU memory in use on ``device`` by every process and allocator: NVML's ``used`` when ``pynvml`` is
    installed, else total − free from ``torch.cuda.mem_get_info`` (the same number, from the driver)."""
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    try:
        import pynvml

        return int(pynvml.nvmlDeviceGetMemoryInfo(_nvml_handle(index)).used)
    except Exception:  # noqa: BLE001 - pynvml missing or NVML unusable (CUDA_VISIBLE_DEVICES remaps): ask CUDA
        free, total = torch.cuda.mem_get_info(index)
        return int(total - free)


@functools.cache
def _nvml_handle(index: int) -> Any:
    """NVML initialised once per process (the sampler reads every 0.1 s), and the device's handle."""
    import pynvml

    pynvml.nvmlInit()
    return pynvml.nvmlDeviceGetHandleByIndex(index)  # NVML counts devices as CUDA does without masking


def endless(loader: EpochLoader) -> Iterator[dict[str, torch.Tensor]]:
    """Batches from epoch 0, 1, 2, ... (``set_epoch`` before each), as a training loop would see them."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        n = 0
        for batch in loader:
            n += 1
            yield batch
        if n == 0:
            raise FastloadError(
                "the loader yielded no batch in a whole epoch; use a smaller batch size or drop_last=False"
            )
        epoch += 1


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Move every tensor of a batch to ``device`` (asynchronously from pinned memory); a no-op when there."""
    return {
        k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) and v.device != device else v)
        for k, v in batch.items()
    }


def _batch_len(batch: dict[str, torch.Tensor]) -> int:
    for key in ("index", "image"):
        if key in batch:
            return int(batch[key].shape[0])
    return int(next(iter(batch.values())).shape[0])


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


@dataclass(frozen=True)
class StepTimes:
    """What the measured loop recorded, step by step (host seconds), and over the whole loop.

    wait, h2d, compute : per measured step: ``next(loader)``, the move to the device, the training step (on
        CUDA the enqueue only)
    events : per measured step, CUDA events recorded before and after the step (empty off CUDA)
    samples : samples in the measured batches
    wall_s, cpu_s : wall time of the measured loop (CUDA synchronised at its end), and the process tree's CPU
        seconds over it
    first_batch_s : from the start of the warm-up to the first batch in hand
    """

    wait: list[float]
    h2d: list[float]
    compute: list[float]
    events: list[tuple[Any, Any]]
    samples: int
    wall_s: float
    cpu_s: float
    first_batch_s: float


def measure(
    loader: EpochLoader,
    step: StepFn | None,
    *,
    steps: int,
    warmup: int,
    device: torch.device | str,
    batches: Iterable[dict[str, torch.Tensor]] | None = None,
    gpu_before_bytes: int | None = None,
) -> dict[str, Any]:
    """Run ``warmup`` then ``steps`` training steps (`run_steps`) and return the measurements (`summary`).

    Parameters
    ----------
    loader : yields batch dicts (see docs/design.md, Loader); iterated over as many epochs as needed
    step : the training step, called with the batch on ``device``; None measures the loader alone
    steps, warmup : measured steps, and steps run before measuring (worker start-up, cuDNN autotuning)
    device : where the step runs; batches elsewhere are moved there (timed as host-to-device)
    batches : an iterator to use instead of ``endless(loader)`` (tests)
    gpu_before_bytes : device-wide GPU memory in use before the loader was made (`device_used_bytes`); the
        ``gpu_mem_device_mb`` reported is the peak above it (None: above the reading at the start of measure)

    Returns a dict of JSON-ready numbers: samples_per_s, batches_per_s, wait_p50_ms, wait_p95_ms,
    wait_mean_ms, h2d_mean_ms, step_mean_ms, stall_pct, stall_method, cpu_cores_busy, cpu_util_pct, peak_rss_mb,
    gpu_mem_peak_mb (torch's allocator), gpu_mem_device_mb (device-wide, above ``gpu_before_bytes``: DALI's pool
    too), gpu_mem_device_peak_mb (device-wide in use at the peak), first_batch_s, wall_s, steps, warmup, samples.
    """
    check_int("measure: steps", steps, 1, error=ValueError)
    check_int("measure: warmup", warmup, 0, error=ValueError)
    device = torch.device(device)
    cuda = device.type == "cuda"
    it = iter(batches) if batches is not None else endless(loader)
    if cuda and gpu_before_bytes is None:
        gpu_before_bytes = device_used_bytes(device)
    sampler = ProcessTreeSampler(gpu=device if cuda else None).start()
    try:
        times = run_steps(it, step, steps=steps, warmup=warmup, device=device, sampler=sampler)
    finally:
        sampler.stop()
        close = getattr(it, "close", None)  # end the loader's pass now, not whenever the generator is collected
        if close is not None:
            close()
    return summary(
        times, step=step is not None, warmup=warmup, device=device, sampler=sampler, gpu_before_bytes=gpu_before_bytes
    )


def _warm_up(
    it: Iterator[dict[str, torch.Tensor]], step: StepFn | None, *, warmup: int, device: torch.device, t_first: float
) -> float | None:
    """Run the unmeasured steps; returns the seconds from ``t_first`` to the first batch (None without warm-up)."""
    first_batch_s = None
    for i in range(warmup):
        batch = to_device(next(it), device)
        if i == 0:
            first_batch_s = time.perf_counter() - t_first
        if step is not None:
            step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    return first_batch_s


def run_steps(
    it: Iterator[dict[str, torch.Tensor]],
    step: StepFn | None,
    *,
    steps: int,
    warmup: int,
    device: torch.device,
    sampler: ProcessTreeSampler,
) -> StepTimes:
    """The run loop: ``warmup`` unmeasured steps, then ``steps`` timed ones (the NVTX ranges and synchronisation
    of the module docstring); the host never waits for the GPU inside it."""
    cuda = device.type == "cuda"
    t_first = time.perf_counter()
    first_batch_s = _warm_up(it, step, warmup=warmup, device=device, t_first=t_first)
    events = (
        [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
        if cuda
        else []
    )
    wait, h2d, compute = [], [], []
    samples = 0
    cpu0 = sampler.cpu_seconds()
    t_start = time.perf_counter()
    for i in range(steps):
        t0 = time.perf_counter()
        with nvtx_range(WAIT):
            batch = next(it)
        t1 = time.perf_counter()
        if first_batch_s is None:  # no warm-up: the first measured batch is the first batch
            first_batch_s = t1 - t_first
        with nvtx_range(H2D):
            batch = to_device(batch, device)
        t2 = time.perf_counter()
        with nvtx_range(STEP):
            if cuda:
                events[i][0].record()
            if step is not None:
                step(batch)
            if cuda:
                events[i][1].record()
        t3 = time.perf_counter()
        wait.append(t1 - t0)
        h2d.append(t2 - t1)
        compute.append(t3 - t2)
        samples += _batch_len(batch)
    if cuda:
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t_start
    return StepTimes(wait, h2d, compute, events, samples, wall, sampler.cpu_seconds() - cpu0, first_batch_s)


def _stall(times: StepTimes, *, step: bool, cuda: bool) -> tuple[float | None, str | None, float, float]:
    """(stall %, the rule used, mean step ms, host stall %): the GPU's idle time between steps on CUDA, the host's
    waits on the CPU, none without a step."""
    wait, h2d, compute = sum(times.wait), sum(times.h2d), sum(times.compute)
    host_total = wait + h2d + compute
    host_stall = 100.0 * (wait + h2d) / host_total if host_total > 0 else float("nan")
    host_step_ms = 1e3 * float(np.mean(times.compute))
    if cuda and step:
        events = times.events
        span = events[0][0].elapsed_time(events[-1][1])
        idle = sum(events[i - 1][1].elapsed_time(events[i][0]) for i in range(1, len(events)))
        stall = 100.0 * idle / span if span > 0 else float("nan")
        return stall, "gpu_idle_cuda_events", float(np.mean([a.elapsed_time(b) for a, b in events])), host_stall
    if step:
        return host_stall, "host_wall_clock", host_step_ms, host_stall
    # no compute: the loop only waits, a stall of 100 % by definition, which says nothing about the loader
    return None, None, host_step_ms, host_stall


def summary(
    times: StepTimes,
    *,
    step: bool,
    warmup: int,
    device: torch.device,
    sampler: ProcessTreeSampler,
    gpu_before_bytes: int | None,
) -> dict[str, Any]:
    """The JSON-ready numbers of `measure` from the run loop's `StepTimes` and the sampler's peaks."""
    from fastload.cores import usable_cores

    cuda = device.type == "cuda"
    stall, method, step_ms, host_stall = _stall(times, step=step, cuda=cuda)
    steps, wall = len(times.wait), times.wall_s
    cores = times.cpu_s / wall if wall > 0 else float("nan")
    return {
        "steps": steps,
        "warmup": warmup,
        "samples": times.samples,
        "wall_s": wall,
        "samples_per_s": times.samples / wall,
        "batches_per_s": steps / wall,
        "wait_p50_ms": 1e3 * _pct(times.wait, 50),
        "wait_p95_ms": 1e3 * _pct(times.wait, 95),
        "wait_mean_ms": 1e3 * float(np.mean(times.wait)),
        "h2d_mean_ms": 1e3 * float(np.mean(times.h2d)),
        "step_mean_ms": step_ms,
        "stall_pct": stall,
        "host_stall_pct": host_stall,
        "stall_method": method,
        "cpu_cores_busy": cores,
        "cpu_util_pct": 100.0 * cores / usable_cores(),
        "peak_rss_mb": sampler.peak_rss_bytes() / 2**20,
        "gpu_mem_peak_mb": (torch.cuda.max_memory_allocated(device) / 2**20) if cuda else None,
        "gpu_mem_device_mb": (sampler.peak_gpu_bytes() - gpu_before_bytes) / 2**20 if cuda else None,
        "gpu_mem_device_peak_mb": sampler.peak_gpu_bytes() / 2**20 if cuda else None,
        "first_batch_s": times.first_batch_s,
    }
