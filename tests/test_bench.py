"""The benchmark: SegNet and its loss, the measuring harness on a fake loader, the report, the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from fastload.targets import render_weights
from fastload.tools.bench.measure import ProcessTreeSampler, endless, measure
from fastload.tools.bench.model import SegNet, TrainStep, segnet_loss
from fastload.tools.bench.report import format_table, plot, validate_report, write_json
from fastload.tools.bench.run import BenchConfig, dali_device_sentence, run_bench
from fastload.tools.bench.storage import DelayedCache


def fake_batch(
    n: int, h: int = 32, w: int = 32, *, num_classes: int = 4, stride: int = 1
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(n * 1000 + h)
    semantic = torch.randint(0, num_classes, (n, h, w), generator=g)  # train ids 0..K, num_classes = K + 1
    semantic[:, :2] = 255  # an ignored band, as crowd regions and warp padding give
    instance = torch.randint(0, 4, (n, h, w), generator=g, dtype=torch.int32)
    hh, ww = h // stride, w // stride
    return {
        "image": torch.randn(n, 3, h, w, generator=g),
        "semantic": semantic,
        "instance": instance,
        "heatmap": torch.rand(n, 1, hh, ww, generator=g),
        "offset": torch.randn(n, 2, hh, ww, generator=g) * 5,
        **render_weights(semantic, instance, stride=stride),
        "index": torch.arange(n, dtype=torch.int64),
    }


class FakeLoader:
    """Yields ``batches_per_epoch`` batches per epoch, sleeping ``delay`` seconds before each (the data wait)."""

    def __init__(self, *, batch_size: int = 2, batches_per_epoch: int = 3, delay: float = 0.0, size=(32, 32)):
        self.batch_size, self.batches_per_epoch, self.delay, self.size = (
            batch_size,
            batches_per_epoch,
            delay,
            size,
        )
        self.epochs: list[int] = []
        self.closed = False
        self.device = torch.device("cpu")

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self):
        for _ in range(self.batches_per_epoch):
            time.sleep(self.delay)
            yield fake_batch(self.batch_size, *self.size)

    def close(self) -> None:
        self.closed = True


# ---- the model ------------------------------------------------------------------------------------------


def test_segnet_shapes_and_backward_under_bf16_autocast_on_cpu():
    model = SegNet(4, width=8)
    batch = fake_batch(2, 32, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = model(batch["image"])
    assert pred["semantic"].shape == (2, 4, 32, 48)
    assert pred["heatmap"].shape == (2, 1, 32, 48)
    assert pred["offset"].shape == (2, 2, 32, 48)
    loss = segnet_loss(pred, batch)
    assert loss.total.dtype == torch.float32
    for part in (loss.total, loss.semantic, loss.heatmap, loss.offset):
        assert torch.isfinite(part)
    loss.total.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_segnet_loss_handles_strided_maps_and_an_all_ignored_batch():
    batch = fake_batch(2, 32, 32, stride=4)
    batch["semantic"][:] = 255
    pred = SegNet(4, width=8)(batch["image"])
    loss = segnet_loss(pred, batch)
    assert loss.semantic.item() == 0.0
    assert torch.isfinite(loss.total)


def test_segnet_loss_weights_small_instances_and_masks_the_centre_loss_by_ignore():
    batch = fake_batch(1, 32, 32)
    g = torch.Generator().manual_seed(0)
    pred = {
        "semantic": torch.randn(1, 4, 32, 32, generator=g),
        "heatmap": torch.zeros(1, 1, 32, 32),
        "offset": torch.zeros(1, 2, 32, 32),
    }
    plain = segnet_loss(pred, {k: v for k, v in batch.items() if k != "semantic_weight"})
    batch["semantic_weight"] = torch.full((1, 32, 32), 3.0)
    assert torch.allclose(segnet_loss(pred, batch).semantic, 3 * plain.semantic)  # weights scale each pixel's loss
    batch["semantic"][:] = 1
    batch.update(render_weights(batch["semantic"], batch["instance"]))
    batch["heatmap"][:] = 0
    batch["heatmap"][0, 0, :16] = 1.0  # a centre the prediction (0) misses, in the top half
    assert segnet_loss(pred, batch).heatmap.item() == 0.5  # counted: half the pixels off by 1
    batch["semantic"][0, :16] = 255  # the top half becomes ignore: centre weight 0 there
    batch.update(render_weights(batch["semantic"], batch["instance"]))
    assert segnet_loss(pred, batch).heatmap.item() == 0.0  # not counted any more


def test_train_step_lowers_the_loss_on_a_fixed_batch():
    step = TrainStep(4, "cpu", width=8, precision="bf16")
    batch = fake_batch(2, 32, 32)
    first = step(batch).item()
    for _ in range(4):
        last = step(batch).item()
    assert last < first


def test_segnet_refuses_sizes_not_divisible_by_16():
    with pytest.raises(ValueError, match="divisible by 16"):
        SegNet(2, width=4)(torch.zeros(1, 3, 30, 32))


# ---- the harness ------------------------------------------------------------------------------------------


def test_endless_walks_epochs_and_sets_each():
    loader = FakeLoader(batches_per_epoch=2)
    it = endless(loader)
    for _ in range(5):
        next(it)
    assert loader.epochs == [0, 1, 2]


def test_measure_on_a_fake_loader_with_known_sleeps():
    loader = FakeLoader(batch_size=2, batches_per_epoch=3, delay=0.02)

    def step(batch):
        time.sleep(0.02)

    m = measure(loader, step, steps=6, warmup=1, device="cpu")
    assert m["samples"] == 12
    assert m["samples_per_s"] > 0 and m["batches_per_s"] > 0
    assert 0.0 <= m["stall_pct"] <= 100.0
    assert m["stall_method"] == "host_wall_clock"
    # generous sanity only: the loader sleeps 20 ms per batch, so the wait cannot be below it
    assert m["wait_p50_ms"] >= 15.0
    assert m["wait_p95_ms"] >= m["wait_p50_ms"]
    assert m["step_mean_ms"] >= 15.0
    assert m["gpu_mem_peak_mb"] is None
    assert m["peak_rss_mb"] > 0
    assert m["cpu_cores_busy"] >= 0


def test_measure_without_a_model_is_all_wait():
    m = measure(FakeLoader(delay=0.01), None, steps=3, warmup=0, device="cpu")
    assert m["stall_pct"] is None and m["stall_method"] is None  # nothing to stall without compute
    assert m["host_stall_pct"] > 50.0
    assert m["first_batch_s"] > 0


def test_measure_validates_its_arguments():
    with pytest.raises(ValueError, match="steps"):
        measure(FakeLoader(), None, steps=0, warmup=0, device="cpu")


def test_process_tree_sampler_counts_a_child_process(tmp_path):
    import subprocess
    import sys

    sampler = ProcessTreeSampler(interval=0.02).start()
    before = sampler.cpu_seconds()
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<0.4: pass"]
    )
    time.sleep(0.3)
    during = sampler.cpu_seconds()
    child.wait()
    sampler.stop()
    assert during - before > 0.05
    assert sampler.peak_rss_bytes() > 0


# ---- the report ------------------------------------------------------------------------------------------


def _fake_factory(name, cfg, batch_size):
    return FakeLoader(batch_size=batch_size, batches_per_epoch=2, size=cfg.size)


def test_run_bench_report_json_and_plot(tmp_path):
    cfg = BenchConfig(
        cache=str(tmp_path), batch_sizes=(1, 2), size=(32, 32), steps=3, warmup=1, workers=1, width=4
    )
    report = run_bench(cfg, loader_factory=_fake_factory, num_classes=4, log=lambda m: None)
    validate_report(report)
    assert [(r["loader"], r["batch_size"]) for r in report["results"]] == [
        ("cpu", 1),
        ("dali", 1),
        ("cpu", 2),
        ("dali", 2),
    ]
    assert report["config"]["workers"] == 1
    assert report["command"].startswith("fastload bench --cache")
    assert {"cpu", "cores_logical", "gpu", "os", "python", "torch", "dali", "numpy", "opencv", "date"} <= set(
        report["machine"]
    )
    path = write_json(tmp_path / "out" / "r.json", report)
    loaded = json.loads(path.read_text())
    validate_report(loaded)
    assert loaded["results"][0]["gpu_mem_peak_mb"] is None
    png = plot(tmp_path / "r.png", report, batch_size=2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_table(report["results"])
    assert "samples/s" in table and "dali" in table
    assert dali_device_sentence(report) in (
        "DALI ran on the CPU: no CUDA GPU visible",
        f"DALI ran on the CPU, as asked (--device cpu), although a GPU is visible ({report['machine']['gpu']})",
    )


def test_bench_config_refuses_bad_values(tmp_path):
    with pytest.raises(ValueError, match="choose from"):
        BenchConfig(cache=str(tmp_path), loaders=("gpu",))
    with pytest.raises(ValueError, match="divisible by 16"):
        BenchConfig(cache=str(tmp_path), size=(100, 100))


def test_validate_report_names_missing_keys():
    with pytest.raises(ValueError, match="machine"):
        validate_report({"results": []})


# ---- the CLI on a real (tiny, synthetic) cache, both loaders ---------------------------------------------


def test_bench_cli_both_loaders_with_segnet(synth_cache, tmp_path, capsys):
    from fastload.tools.cli import main

    out, png = tmp_path / "r.json", tmp_path / "r.png"
    argv = ["bench", "--cache", str(synth_cache), "--loaders", "cpu,dali", "--batch-size", "4"]
    argv += ["--size", "64", "64", "--steps", "3", "--warmup", "1", "--workers", "1", "--device", "cpu"]
    argv += ["--model", "segnet", "--width", "4", "--out", str(out), "--plot", str(png)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    validate_report(report)
    assert [r["loader"] for r in report["results"]] == ["cpu", "dali"]
    for r in report["results"]:
        assert r["device"] == "cpu" and r["batch_size"] == 4 and r["samples"] == 12
        assert 0.0 <= r["stall_pct"] <= 100.0
        assert r["gpu_mem_peak_mb"] is None
    assert report["config"]["model"] == "segnet" and report["config"]["size"] == [64, 64]
    assert png.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "samples/s" in printed and "DALI ran on the CPU" in printed


def test_bench_cli_sweep_without_a_model(synth_cache, tmp_path):
    from fastload.tools.cli import main

    out, png = tmp_path / "r.json", tmp_path / "r.png"
    argv = ["bench", "--cache", str(synth_cache), "--loaders", "dali", "--batch-size", "4", "--sweep", "2,4"]
    argv += ["--size", "32", "32", "--steps", "2", "--warmup", "0", "--workers", "1", "--device", "cpu"]
    argv += ["--model", "none", "--out", str(out), "--plot", str(png)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert [(r["loader"], r["batch_size"]) for r in report["results"]] == [("dali", 2), ("dali", 4)]
    assert png.read_bytes()[:4] == b"\x89PNG"


class _Counted(DelayedCache):
    """The DelayedCache the bench opens, counting: each read (in whichever process) leaves a file in ``meter_dir``."""

    meter_dir = ""

    def read_bytes(self, fd: int, length: int, start: int) -> bytes:
        import os
        from pathlib import Path

        Path(self.meter_dir, f"{os.getpid()}-{time.monotonic_ns()}").touch()
        return super().read_bytes(fd, length, start)


def test_bench_cli_read_latency_slows_every_read_and_is_recorded(synth_cache, tmp_path, capsys, monkeypatch):
    """--read-latency-ms: storage planning, every sample read that much slower (DelayedCache), closed after."""
    import shutil

    import psutil

    from fastload.tools.bench import storage
    from fastload.tools.cli import main

    cache = shutil.copytree(synth_cache, tmp_path / "cache")  # a copy no other test holds open

    opened = []
    original = storage.DelayedCache.from_ms.__func__
    reads = tmp_path / "reads"
    reads.mkdir()

    def spy(cls, root, latency_ms, **kwargs):
        opened.append(original(_Counted, root, latency_ms, **kwargs))
        opened[-1].meter_dir = str(reads)  # an instance attribute: it travels to the feed workers
        return opened[-1]

    monkeypatch.setattr(storage.DelayedCache, "from_ms", classmethod(spy))
    out = tmp_path / "r.json"
    argv = ["bench", "--cache", str(cache), "--loaders", "dali", "--batch-size", "2", "--size", "32", "32"]
    argv += ["--steps", "2", "--warmup", "0", "--workers", "1", "--device", "cpu", "--model", "none"]
    argv += ["--read-latency-ms", "5", "--out", str(out)]
    assert main(argv) == 0
    assert "5 ms longer" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["config"]["read_latency_ms"] == 5.0 and "--read-latency-ms 5" in report["command"]
    # the reads happen in the loader's feed workers, through this cache: each of them took 5 ms more
    assert len(opened) == 1 and opened[0].latency_s == 0.005 and len(list(reads.iterdir())) >= 4
    # its shard files closed after the measurement: this process holds none of the cache's files open
    assert not [f.path for f in psutil.Process().open_files() if Path(f.path).is_relative_to(cache)]


def test_bench_cli_refuses_an_unknown_loader_and_a_missing_cache(tmp_path, capsys):
    from fastload.tools.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--cache", str(tmp_path), "--loaders", "cpu,gpu"])
    assert main(["bench", "--cache", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_results_table_prints_markdown_rows_from_reports(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "results_table.py"
    spec = importlib.util.spec_from_file_location("results_table", path)
    results_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results_table)

    cfg = BenchConfig(cache=str(tmp_path), size=(32, 32), steps=2, warmup=0, workers=1, model="none")
    report = run_bench(cfg, loader_factory=_fake_factory, log=lambda m: None)
    write_json(tmp_path / "a.json", report)
    (tmp_path / "other.json").write_text('{"not": "a report"}')
    assert results_table.main([str(tmp_path)]) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert lines[0].startswith("| machine | loader | device | batch | samples/s | stall % |")
    assert len(lines) == 2 + 2  # header, rule, cpu and dali rows
    assert "| cpu | cpu | 48 |" in lines[2] and "`fastload bench --cache" in lines[2]
    assert "skipping" in out.err


@pytest.mark.cuda
def test_gpu_memory_is_counted_device_wide_beyond_torchs_allocator():
    # what a library allocates itself (DALI's pool; CuPy's here) is invisible to torch.cuda.max_memory_allocated
    from fastload.tools.bench.measure import device_used_bytes

    cupy = pytest.importorskip("cupy")
    device = torch.device("cuda", torch.cuda.current_device())
    loader = FakeLoader(batch_size=2, batches_per_epoch=2)
    before = device_used_bytes(device)
    held = cupy.zeros(512 * 2**20, dtype=cupy.uint8)  # the loader's own pool, made after the reading before
    m = measure(loader, None, steps=3, warmup=1, device=device, gpu_before_bytes=before)
    del held
    assert m["gpu_mem_device_mb"] >= 500
    assert m["gpu_mem_device_peak_mb"] >= m["gpu_mem_device_mb"]
    assert m["gpu_mem_peak_mb"] < 100


def test_bench_bounds_the_steps_it_makes_timing_events_for():
    with pytest.raises(ValueError, match=r"bench: steps must be a positive integer \(1, 2, ... up to 100000\), got 100000000"):
        BenchConfig(cache="c", steps=10**8)
