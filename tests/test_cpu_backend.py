"""The CPU backend (torch DataLoader workers + reference kernels): batch layout, worker counts, empty
batches, errors from workers, abandoned epochs and clean shutdown. Runs on a tiny in-memory cache."""

from __future__ import annotations

import platform

import cv2
import numpy as np
import pytest
import torch
from loader_kit import loader_processes, run_unguarded_script

from fastload.augment.config import AugmentConfig, TargetsConfig
from fastload.augment.params import draw_params
from fastload.augment.reference import augment_sample, normalize_image
from fastload.cache.format import SampleMembers, encode_label
from fastload.cache.validate import checked_label_layouts
from fastload.errors import CacheError
from fastload.pipeline.opencv import OpencvBackend
from fastload.pipeline.plan import BATCH_KEYS, BatchPlan
from fastload.procs import keep_freed_memory
from fastload.targets import center_targets, panoptic_weights, semantic_weights

OUT = (32, 48)
CFG = AugmentConfig.default().replace(targets=TargetsConfig(stride=2))


class TinyCache:
    """A stand-in for ``open_cache``: members encoded like the real cache's; a corrupt sample raises CacheError.

    Defined at module level: the forkserver workers unpickle it by importing this module.
    """

    def __init__(self, n: int = 7, *, corrupt: tuple[int, ...] = ()) -> None:
        self.n, self.corrupt = n, corrupt

    def __len__(self) -> int:
        return self.n

    def image_size(self, i: int) -> tuple[int, int]:
        return self.stored_size(i)

    @staticmethod
    def stored_size(i: int) -> tuple[int, int]:
        return (24 + 2 * i, 40)

    def span_bytes(self, i: int) -> int:
        return 8192

    def arrays(self, i: int) -> dict:
        h, w = self.stored_size(i)
        rng = np.random.default_rng(i)
        instance = np.zeros((h, w), dtype=np.uint16)
        instance[4:12, 5:15] = 1
        instance[10:20, 22:35] = 2
        return {
            "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            "semantic": np.where(instance > 0, instance + 3, 0).astype(np.uint8),
            "instance": instance,
        }

    def read_members(self, i: int) -> SampleMembers:
        if i in self.corrupt:
            raise CacheError(f"shard-00000.tar, sample {i:08d}: CRC-32 mismatch in {i:08d}.sem.lz4; rebuild the cache")
        a = self.arrays(i)
        semantic, instance = encode_label(a["semantic"], kind="sem", level=1), encode_label(a["instance"], kind="ins", level=1)
        return SampleMembers(
            shard="shard-00000.tar",
            key=f"{i:08d}",
            image=cv2.imencode(".png", a["image"][..., ::-1])[1].tobytes(),
            image_ext="png",
            semantic=semantic,
            instance=instance,
            meta={"image_id": i, "instances": [{}, {}]},
            layouts=checked_label_layouts(semantic, instance, a["semantic"].shape),  # the members' own headers
        )


def reference_batch_row(arrays: dict, params, cfg: AugmentConfig, out_hw) -> dict:
    """What one row of a batch must be: the reference kernels, then the definitions of normalisation and targets."""
    ref = augment_sample(arrays, params, cfg, out_hw=out_hw)
    heat, offset = center_targets(ref["instance"], cfg.targets.sigma, stride=cfg.targets.stride)
    weights = panoptic_weights(ref["semantic"], ref["instance"], stride=cfg.targets.stride)
    return {
        "image": normalize_image(ref["image"], cfg.normalize.mean, cfg.normalize.std),
        "semantic": ref["semantic"].astype(np.int64),
        "instance": ref["instance"].astype(np.int32),
        "heatmap": heat[None],
        "offset": offset,
        "semantic_weight": semantic_weights(ref["instance"]),
        **dict(zip(("center_weight", "offset_weight"), (w[None] for w in weights), strict=True)),
    }


def plan(indices, epoch: int = 0) -> BatchPlan:
    idx = np.asarray(indices, dtype=np.int64)
    return BatchPlan(indices=idx, params=tuple(draw_params(0, epoch, int(i), CFG) for i in idx))


def backend(cache=None, *, workers: int = 0, batch_size: int = 3) -> OpencvBackend:
    return OpencvBackend(
        cache=cache or TinyCache(),
        out_size=OUT,
        augment=CFG,
        device=torch.device("cpu"),
        batch_size=batch_size,
        num_workers=workers,
        prefetch=2,
    )


EXPECTED = {
    "image": (torch.float32, (3, *OUT)),
    "semantic": (torch.int64, OUT),
    "instance": (torch.int32, OUT),
    "heatmap": (torch.float32, (1, OUT[0] // 2, OUT[1] // 2)),
    "offset": (torch.float32, (2, OUT[0] // 2, OUT[1] // 2)),
    "semantic_weight": (torch.float32, OUT),
    "center_weight": (torch.float32, (1, OUT[0] // 2, OUT[1] // 2)),
    "offset_weight": (torch.float32, (1, OUT[0] // 2, OUT[1] // 2)),
    "index": (torch.int64, ()),
}


def check_layout(batch: dict, n: int) -> None:
    assert tuple(batch) == BATCH_KEYS
    for key, (dtype, shape) in EXPECTED.items():
        assert batch[key].dtype == dtype, (key, batch[key].dtype)
        assert tuple(batch[key].shape) == (n, *shape), (key, tuple(batch[key].shape))


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_have_the_declared_keys_dtypes_and_shapes(workers):
    plans = [plan([0, 1, 2]), plan([5, 3, 4]), plan([6])]
    be = backend(workers=workers)
    try:
        batches = list(be.iterate(iter(plans)))
    finally:
        be.close()
    assert [len(b["index"]) for b in batches] == [3, 3, 1]
    for b, p in zip(batches, plans, strict=True):
        check_layout(b, len(p.indices))
        assert b["index"].tolist() == p.indices.tolist()


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_equal_the_reference_applied_per_sample(workers):
    cache = TinyCache()
    p = plan([4, 0, 6], epoch=3)
    be = backend(cache, workers=workers)
    try:
        (batch,) = list(be.iterate(iter([p])))
    finally:
        be.close()
    for row, (i, params) in enumerate(zip(p.indices.tolist(), p.params, strict=True)):
        ref = reference_batch_row(cache.arrays(i), params, CFG, OUT)
        for key, expected in ref.items():
            np.testing.assert_array_equal(batch[key][row].numpy(), expected, err_msg=key)


@pytest.mark.parametrize("workers", [0, 2])
def test_empty_plan_gives_empty_tensors_of_the_right_shape(workers):
    be = backend(workers=workers)
    try:
        batches = list(be.iterate(iter([plan([1, 2]), plan([])])))
    finally:
        be.close()
    check_layout(batches[0], 2)
    check_layout(batches[1], 0)


@pytest.mark.parametrize("workers", [0, 2])
def test_worker_errors_name_the_shard_and_sample(workers):
    be = backend(TinyCache(corrupt=(5,)), workers=workers)
    try:
        with pytest.raises(CacheError, match=r"shard-00000.tar, sample 00000005: CRC-32 mismatch"):
            list(be.iterate(iter([plan([0, 1]), plan([5, 2])])))
    finally:
        be.close()


class WrongSize(TinyCache):
    def image_size(self, i: int) -> tuple[int, int]:
        h, w = self.stored_size(i)
        return h + 1, w  # the index disagrees with the members


@pytest.mark.parametrize("workers", [0, 2])
def test_a_member_that_disagrees_with_the_index_names_shard_and_sample(workers):
    be = backend(WrongSize(), workers=workers)
    try:
        with pytest.raises(CacheError, match=r"shard-00000.tar, sample 00000002 \(cache index 2\): image decodes to 28 x 40, the sample is 29 x 40"):
            list(be.iterate(iter([plan([2])])))
    finally:
        be.close()


def _workers() -> set[int]:
    return loader_processes()


def test_workers_persist_across_epochs_and_stop_on_close():
    before = _workers()
    be = backend(workers=2)
    first = [b["index"].tolist() for b in be.iterate(iter([plan([0, 1, 2]), plan([3])]))]
    started = _workers() - before
    assert len(started) == 2
    second = [b["index"].tolist() for b in be.iterate(iter([plan([6, 5], epoch=1)]))]
    assert _workers() - before == started  # the same processes served the second epoch
    assert first == [[0, 1, 2], [3]] and second == [[6, 5]]
    be.close()
    be.close()  # idempotent
    assert not (_workers() & started)
    with pytest.raises(RuntimeError, match="after close"):
        next(be.iterate(iter([plan([0])])))


@pytest.mark.parametrize("workers", [0, 2])
def test_abandoned_pass_does_not_leak_into_the_next(workers):
    be = backend(workers=workers)
    try:
        old = be.iterate(iter([plan([i]) for i in range(7)]))
        assert next(old)["index"].tolist() == [0]  # abandon after one batch, batches still in flight
        new = [b["index"].tolist() for b in be.iterate(iter([plan([6, 5]), plan([4])], ))]
        assert new == [[6, 5], [4]]
        with pytest.raises(RuntimeError, match="superseded"):  # as the DALI backend's: it cannot steal new batches
            next(old)
        again = [b["index"].tolist() for b in be.iterate(iter([plan([1, 2])]))]
        assert again == [[1, 2]]
    finally:
        be.close()


@pytest.mark.cuda
def test_batches_land_on_the_gpu():
    be = OpencvBackend(
        cache=TinyCache(),
        out_size=OUT,
        augment=CFG,
        device=torch.device("cuda"),
        batch_size=2,
        num_workers=1,
        prefetch=2,
    )
    try:
        (batch,) = list(be.iterate(iter([plan([0, 1])])))
    finally:
        be.close()
    assert all(v.device.type == "cuda" for v in batch.values())
    check_layout(batch, 2)


# ------------------------------------------------------------------------------------------ real caches


def _real_backend(cache, *, workers: int, size=(64, 96)) -> OpencvBackend:
    return OpencvBackend(
        cache=cache,
        out_size=size,
        augment=CFG,
        device=torch.device("cpu"),
        batch_size=4,
        num_workers=workers,
        prefetch=2,
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_real_cache_batches_equal_the_reference(synth_cache, workers):
    from fastload.samples import open_cache

    cache = open_cache(synth_cache)
    plans = [plan([3, 17, 8, 0], epoch=2), plan([23, 9])]
    be = _real_backend(cache, workers=workers)
    try:
        batches = list(be.iterate(iter(plans)))
    finally:
        be.close()
    for batch, p in zip(batches, plans, strict=True):
        check_layout_sized(batch, len(p.indices), (64, 96), CFG.targets.stride)
        for row, (i, params) in enumerate(zip(p.indices.tolist(), p.params, strict=True)):
            sample = cache[i]
            ref = reference_batch_row(sample, params, CFG, (64, 96))
            for key, expected in ref.items():
                np.testing.assert_array_equal(batch[key][row].numpy(), expected, err_msg=f"{key} of sample {i}")


def check_layout_sized(batch: dict, n: int, out_hw, stride: int) -> None:
    mhw = (out_hw[0] // stride, out_hw[1] // stride)
    shapes = {
        "image": (3, *out_hw),
        "semantic": out_hw,
        "instance": out_hw,
        "heatmap": (1, *mhw),
        "offset": (2, *mhw),
        "semantic_weight": out_hw,
        "center_weight": (1, *mhw),
        "offset_weight": (1, *mhw),
    }
    assert tuple(batch) == BATCH_KEYS
    for key, shape in shapes.items():
        assert tuple(batch[key].shape) == (n, *shape), key
        assert batch[key].dtype == EXPECTED[key][0], key


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_member_in_a_worker_names_shard_and_sample(synth_cache, tmp_path, workers):
    import json
    import shutil

    from fastload.samples import open_cache

    root = tmp_path / "cache"
    shutil.copytree(synth_cache, root)
    cache = open_cache(root)
    shard, key = cache.read_members(10).shard, cache.key(10)
    entry = json.loads((root / shard.replace(".tar", ".json")).read_text())
    [sample] = [s for s in entry["samples"] if s["key"] == key]
    [member] = [m for m in sample["members"] if m["kind"] == "sem"]
    data = bytearray((root / shard).read_bytes())
    data[member["offset"] + member["size"] // 2] ^= 0x01
    (root / shard).write_bytes(bytes(data))

    be = _real_backend(open_cache(root), workers=workers)
    try:
        with pytest.raises(CacheError, match=rf"{shard}, sample {key}.*CRC-32"):
            list(be.iterate(iter([plan([0, 1]), plan([2, 10])])))
    finally:
        be.close()


def test_compact_batches_finished_in_the_main_process_equal_batches_finished_in_the_workers():
    # a CUDA loader's workers return uint8 images and int16 masks and the main process finishes them on the
    # GPU (fastload.pipeline.batch.finish_batch); here the same path runs on the CPU and must give the same bits
    plans = [plan([4, 0, 6], epoch=3), plan([2, 5])]
    in_workers = list(backend(workers=0).iterate(iter(plans)))
    compact = backend(workers=0)
    compact._dataset.finish = False
    finished_later = list(compact.iterate(iter(plans)))
    for a, b in zip(in_workers, finished_later, strict=True):
        assert tuple(a) == tuple(b) == BATCH_KEYS
        for key in BATCH_KEYS:
            assert torch.equal(a[key], b[key]), key


def test_an_unguarded_script_gets_told_about_the_main_guard(synth_cache, tmp_path):
    # forkserver workers import the script's main module; without the guard it runs again in each worker
    loader = f"fastload.CpuLoader({str(synth_cache)!r}, batch_size=2, size=(32, 32), device='cpu', num_threads=1)"
    done = run_unguarded_script(tmp_path, loader)
    assert done.returncode != 0
    assert 'if __name__ == "__main__":' in done.stderr and "forkserver" in done.stderr, done.stderr[-3000:]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_workers_keep_freed_memory_for_reuse():
    # the workers' allocator keeps freed blocks (no first-touch page faults per sample, see keep_freed_memory);
    # the settings must take, or the CPU loader silently loses a third of its speed on a VM
    assert keep_freed_memory()
