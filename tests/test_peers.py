"""The peer loaders (fastload.tools.bench.peers): the batch contract on the real sample photos, targets by the definition,
the per-instance loop equal to center_targets, the missing-extra message, and the bench harness with peers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastload.augment.config import AugmentConfig
from fastload.errors import ConfigError
from fastload.pipeline.plan import BATCH_KEYS
from fastload.samples import open_cache
from fastload.targets import center_targets, center_targets_per_instance, panoptic_weights, semantic_weights
from fastload.tools.bench.peers import PEERS, make_peer

pytest.importorskip("albumentations")
pytest.importorskip("kornia")

SIZE = (64, 96)  # not square: the resize-to-fit pads one axis


def _expected(n: int, size=SIZE) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    h, w = size
    return {
        "image": (torch.float32, (n, 3, h, w)),
        "semantic": (torch.int64, (n, h, w)),
        "instance": (torch.int32, (n, h, w)),
        "heatmap": (torch.float32, (n, 1, h, w)),
        "offset": (torch.float32, (n, 2, h, w)),
        "semantic_weight": (torch.float32, (n, h, w)),
        "index": (torch.int64, (n,)),
    }


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("name", PEERS)
def test_peer_batch_contract_on_the_sample_photos(name, device, sample_cache):
    loader = make_peer(name, sample_cache, batch_size=4, size=SIZE, augment="default", device=device, num_workers=0)
    batch = next(iter(loader))
    assert tuple(batch) == BATCH_KEYS
    for key, (dtype, shape) in _expected(4).items():
        assert (batch[key].dtype, tuple(batch[key].shape)) == (dtype, shape), key
        assert batch[key].device == loader.device, key
    loader.close()
    assert torch.isfinite(batch["image"]).all()
    batch = {key: value.cpu() for key, value in batch.items()}

    cache = open_cache(sample_cache)
    t = AugmentConfig.default().targets
    for k, index in enumerate(batch["index"].tolist()):
        semantic, instance = cache.labels(index)
        # masks are labels of the input: nothing interpolated, only the fill values added
        assert set(batch["semantic"][k].unique().tolist()) <= set(np.unique(semantic).tolist()) | {255}
        ids = batch["instance"][k].numpy()
        assert set(np.unique(ids).tolist()) <= set(np.unique(instance).tolist()) | {0}
        # targets are the NumPy definition applied to the peer's own augmented instance mask
        heatmap, offset = center_targets(ids, t.sigma, stride=t.stride)
        weight = semantic_weights(ids, small_instance_area=t.small_instance_area, small_instance_weight=t.small_instance_weight)
        exact = name != "albumentations-loop"  # the per-instance loop rounds its offsets in float32 once more
        tol = {"rtol": 0, "atol": 0} if exact else {"rtol": 0, "atol": 1e-4}
        np.testing.assert_allclose(batch["heatmap"][k, 0].numpy(), heatmap, **tol)
        np.testing.assert_allclose(batch["offset"][k].numpy(), offset, **tol)
        np.testing.assert_array_equal(batch["semantic_weight"][k].numpy(), weight)
        center, offset_weight = panoptic_weights(batch["semantic"][k].numpy(), ids, stride=t.stride)
        np.testing.assert_array_equal(batch["center_weight"][k, 0].numpy(), center)
        np.testing.assert_array_equal(batch["offset_weight"][k, 0].numpy(), offset_weight)


def test_albumentations_peer_with_worker_processes_and_epochs(sample_cache):
    loader = make_peer("albumentations", sample_cache, batch_size=5, size=(32, 32), device="cpu", num_workers=1)
    assert len(loader) == 4  # 18 samples: 5, 5, 5, 3
    first = torch.cat([b["index"] for b in loader])
    second = torch.cat([b["index"] for b in loader])  # a finished pass moves on to the next epoch
    loader.set_epoch(0)
    again = torch.cat([b["index"] for b in loader])
    loader.close()
    assert sorted(first.tolist()) == list(range(18)) == sorted(second.tolist())
    assert not torch.equal(first, second) and torch.equal(first, again)


def test_per_instance_loop_equals_center_targets():
    rng = np.random.default_rng(3)
    mask = np.zeros((70, 90), dtype=np.int32)
    for i in range(1, 9):  # overlapping boxes, one cut by the border, ids not contiguous
        y, x = rng.integers(-5, 60), rng.integers(-5, 80)
        mask[max(0, y) : y + rng.integers(3, 25), max(0, x) : x + rng.integers(3, 25)] = 3 * i
    heat_loop, off_loop = center_targets_per_instance(mask, sigma=8)
    heat, off = center_targets(mask, 8.0)
    np.testing.assert_allclose(heat_loop, heat, rtol=0, atol=1e-6)
    np.testing.assert_allclose(off_loop, off, rtol=0, atol=1e-4)


def test_loop_peer_refuses_a_stride_the_loop_cannot_render(sample_cache, tmp_path):
    yaml = tmp_path / "aug.yaml"
    yaml.write_text("targets:\n  stride: 4\n")
    with pytest.raises(ConfigError, match="stride 4"):
        make_peer("albumentations-loop", sample_cache, batch_size=2, size=(32, 32), augment=str(yaml), num_workers=0)


@pytest.mark.parametrize(("name", "module"), [("albumentations", "albumentations"), ("kornia", "kornia")])
def test_a_missing_library_names_the_extra(name, module, sample_cache, monkeypatch):
    for mod in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, module, None)  # what `import` sees when the package is not installed
    with pytest.raises(ConfigError) as info:
        make_peer(name, sample_cache, batch_size=2, size=(32, 32), num_workers=0)
    message = str(info.value)
    assert 'pip install "fastload[peers]"' in message and "\n" not in message


def test_the_bench_says_a_peer_is_missing_before_measuring_anything(synth_cache, monkeypatch, capsys):
    from fastload.tools.cli import main

    monkeypatch.setitem(sys.modules, "kornia", None)
    monkeypatch.delitem(sys.modules, "kornia.augmentation", raising=False)
    argv = ["bench", "--cache", str(synth_cache), "--loaders", "cpu,kornia", "--device", "cpu", "--model", "none"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert 'pip install "fastload[peers]"' in captured.err and "bench: cpu loader" not in captured.err


def test_fastload_and_its_bench_do_not_import_the_peer_libraries():
    code = (
        "import sys, fastload, fastload.tools.bench.run, fastload.tools.bench.commands, fastload.tools.bench.peers, fastload.tools.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('albumentations', 'kornia')))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"


# ---- the bench with peers -----------------------------------------------------------------------------------


def test_bench_cli_peers_rounds_and_baseline(synth_cache, tmp_path, capsys):
    from fastload.tools.bench.report import validate_report
    from fastload.tools.cli import main

    out = tmp_path / "r.json"
    argv = ["bench", "--cache", str(synth_cache), "--loaders", "cpu,albumentations,albumentations-loop,kornia"]
    argv += ["--batch-size", "4", "--size", "32", "32", "--steps", "2", "--warmup", "1", "--workers", "1"]
    argv += ["--device", "cpu", "--model", "none", "--rounds", "2", "--baseline", "cpu", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    validate_report(report)
    rows = {r["loader"]: r for r in report["results"]}
    assert list(rows) == ["cpu", "albumentations", "albumentations-loop", "kornia"]
    # round-robin: every loader once per round, in order
    assert [(r["round"], r["loader"]) for r in report["runs"]] == [(k, n) for k in (0, 1) for n in rows]
    assert report["baseline"] == "cpu" and rows["cpu"]["vs_baseline"] == 1.0
    for r in rows.values():
        assert r["rounds"] == 2 and len(r["samples_per_s_rounds"]) == 2 and r["samples"] == 8
        assert r["samples_per_s_min"] <= r["samples_per_s"] <= r["samples_per_s_max"]
        assert r["vs_baseline"] > 0 and r["device"] == "cpu" and r["gpu_mem_device_mb"] is None
    assert report["config"]["rounds"] == 2 and "--rounds 2" in report["command"]
    printed = capsys.readouterr().out
    assert "x base" in printed and "over the cpu loader's" in printed


def _fake_factory(name, cfg, batch_size):
    from test_bench import FakeLoader

    loader = FakeLoader(batch_size=batch_size, batches_per_epoch=2, size=cfg.size)
    loader.workers = cfg.resolved_workers
    loader.cpus = sorted(os.sched_getaffinity(0))
    loader.threads = torch.get_num_threads()
    made.append(loader)
    return loader


made: list = []


def test_baseline_not_among_the_loaders_gives_no_ratio(tmp_path):
    from fastload.tools.bench.report import baseline_sentence, format_table
    from fastload.tools.bench.run import BenchConfig, run_bench

    cfg = BenchConfig(cache=str(tmp_path), size=(32, 32), steps=2, warmup=0, model="none", loaders=("cpu", "dali"))
    report = run_bench(cfg, loader_factory=_fake_factory, log=lambda m: None)
    assert report["baseline"] is None and all(r["vs_baseline"] is None for r in report["results"])
    assert baseline_sentence(report) == "no ratio: the baseline loader 'albumentations' was not among --loaders"
    assert "x base" in format_table(report["results"])


def test_cores_sweep_restricts_every_loader_alike(tmp_path):
    from fastload.tools.bench.report import cores_plot_path, plot_cores
    from fastload.tools.bench.run import BenchConfig, run_bench

    everything = sorted(os.sched_getaffinity(0))
    sweep = (1, 2) if len(everything) >= 2 else (1,)
    threads = torch.get_num_threads()
    made.clear()
    cfg = BenchConfig(
        cache=str(tmp_path), size=(32, 32), steps=2, warmup=0, model="none", loaders=("cpu", "kornia"), cores=sweep
    )
    report = run_bench(cfg, loader_factory=_fake_factory, log=lambda m: None)
    assert [(ld.workers, len(ld.cpus), ld.threads) for ld in made] == [(n, n, n) for n in sweep for _ in range(2)]
    assert [ld.cpus for ld in made][:2] == [everything[:1]] * 2  # the first CPUs, the same for every loader
    assert [(r["cores"], r["loader"]) for r in report["results"]] == [(n, m) for n in sweep for m in ("cpu", "kornia")]
    assert sorted(os.sched_getaffinity(0)) == everything and torch.get_num_threads() == threads  # restored
    png = plot_cores(cores_plot_path(tmp_path / "bench.png"), report)
    assert png.name == "bench-cores.png" and png.read_bytes()[:4] == b"\x89PNG"


def test_limited_cores_reaches_processes_that_already_run():
    from fastload.tools.bench.affinity import limited_cores

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with limited_cores(1) as cpus:
            assert os.sched_getaffinity(child.pid) == set(cpus) == os.sched_getaffinity(0)
        assert os.sched_getaffinity(child.pid) == os.sched_getaffinity(0)
    finally:
        child.kill()
        child.wait()


def test_cores_flag_takes_a_list_or_all():
    from fastload.cores import usable_cores
    from fastload.tools.cli import build_parser

    def cores(text):
        return build_parser().parse_args(["bench", "--cache", "c", "--cores", text]).cores

    assert cores("1,2") == (1, 2)
    assert cores("all") == (usable_cores(),)
