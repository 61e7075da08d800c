"""The DALI backend's mechanics on CPU: batch layout, the graph against the reference kernels, targets rendered
from the graph's own instance output, the GPU label inputs (replayed with NumPy), empty and short batches,
abandoned and superseded passes, named errors, lazy import. Runs on a tiny in-memory cache of members encoded
here (the real-data fidelity checks are in test_fidelity.py)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
import torch

from fastload.augment.config import AugmentConfig, TargetsConfig
from fastload.augment.params import ParamsBatch, SampleParams, draw_params, identity_params
from fastload.augment.reference import augment_sample, normalize_image
from fastload.cache.format import SampleMembers, decode_label, encode_label
from fastload.errors import CacheError, ConfigError
from fastload.pipeline.plan import BATCH_KEYS, BatchPlan
from fastload.targets import center_targets, panoptic_weights, semantic_weights

pytest.importorskip("nvidia.dali")

from fastload.cache.validate import checked_label_layouts  # noqa: E402
from fastload.pipeline.dali import DaliBackend, GraphSpec, PhotometricOps  # noqa: E402
from fastload.pipeline.dali.failures import named_failure  # noqa: E402
from fastload.pipeline.dali.inputs import cpu_label_columns, gpu_label_columns, padded_bytes, param_columns  # noqa: E402

OUT = (32, 48)
DEFAULT = AugmentConfig.default()
NONE = AugmentConfig.none()


def strided(cfg: AugmentConfig, stride: int) -> AugmentConfig:
    return cfg.replace(targets=TargetsConfig(stride=stride))


class MemCache:
    """A stand-in for ``open_cache`` holding members encoded like the real cache's (PNG image: lossless)."""

    def __init__(self, n: int = 7, *, corrupt: tuple[int, ...] = (), unreadable=()) -> None:
        self.n, self.corrupt, self.unreadable = n, corrupt, unreadable
        self.reads = 0

    def __len__(self) -> int:
        return self.n

    def image_size(self, i: int) -> tuple[int, int]:
        return (24 + 2 * (i % 4), 40)

    def span_bytes(self, i: int) -> int:
        return 4096

    def arrays(self, i: int) -> dict:
        """The decoded sample, as ``open_cache(...).labels(i)`` and the image decoder give it."""
        h, w = self.image_size(i)
        rng = np.random.default_rng(i)
        instance = np.zeros((h, w), dtype=np.uint16)
        instance[4:12, 5:15] = 1
        instance[10:20, 22:35] = 300 + i  # ids above 255 survive (the cache allows up to 32767)
        yy, xx = np.mgrid[:h, :w]
        instance[(yy - 16) ** 2 / 25 + (xx - 8) ** 2 / 9 < 1] = 3
        image = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 1.5)
        return {
            "image": image,
            "semantic": np.where(instance > 0, 1 + instance % 3, 0).astype(np.uint8),
            "instance": instance,
        }

    def read_members(self, i: int) -> SampleMembers:
        self.reads += 1
        if i in self.unreadable:
            raise CacheError(
                f"shard shard-00000.tar, sample {i:08d}: member {i:08d}.sem.lz4 fails its CRC-32 check"
            )
        a = self.arrays(i)
        image_png = cv2.imencode(".png", a["image"][..., ::-1])[1].tobytes()
        if i in self.corrupt:
            image_png = image_png[:40]  # a PNG cut short: DALI's decoder fails on it
        semantic, instance = encode_label(a["semantic"], kind="sem", level=1), encode_label(a["instance"], kind="ins", level=1)
        return SampleMembers(
            shard="shard-00000.tar",
            key=f"{i:08d}",
            image=image_png,
            image_ext="png",
            semantic=semantic,
            instance=instance,
            meta={"image_id": i, "instances": [{}] * (300 + i)},  # as built: ids <= the instance count
            layouts=checked_label_layouts(semantic, instance, a["semantic"].shape),  # the members' own headers
        )


def plan(indices, cfg: AugmentConfig = DEFAULT, epoch: int = 0) -> BatchPlan:
    idx = np.asarray(indices, dtype=np.int64)
    return BatchPlan(indices=idx, params=tuple(draw_params(0, epoch, int(i), cfg) for i in idx))


_made: list[DaliBackend] = []


@pytest.fixture(autouse=True)
def _close_backends():
    yield
    while _made:
        _made.pop().close()


def backend(
    cache=None, *, cfg: AugmentConfig = DEFAULT, batch_size: int = 3, prefetch: int = 2, out_size=OUT, workers: int = 1
) -> DaliBackend:
    """A DALI backend on the CPU whose feed runs in ``workers`` processes (0: in this process); closed after the test."""
    be = DaliBackend(
        cache=cache if cache is not None else MemCache(),
        out_size=out_size,
        augment=cfg,
        device="cpu",
        batch_size=batch_size,
        num_threads=2,
        prefetch=prefetch,
        workers=workers,
    )
    _made.append(be)
    return be


def expected_layout(stride: int = 1) -> dict:
    mh, mw = OUT[0] // stride, OUT[1] // stride
    return {
        "image": (torch.float32, (3, *OUT)),
        "semantic": (torch.int64, OUT),
        "instance": (torch.int32, OUT),
        "heatmap": (torch.float32, (1, mh, mw)),
        "offset": (torch.float32, (2, mh, mw)),
        "semantic_weight": (torch.float32, OUT),
        "center_weight": (torch.float32, (1, mh, mw)),
        "offset_weight": (torch.float32, (1, mh, mw)),
        "index": (torch.int64, ()),
    }


def check_layout(batch: dict, n: int, stride: int = 1) -> None:
    assert tuple(batch) == BATCH_KEYS
    for key, (dtype, shape) in expected_layout(stride).items():
        assert batch[key].dtype == dtype, key
        assert tuple(batch[key].shape) == (n, *shape), key
        assert batch[key].device.type == "cpu"


# ----------------------------------------------------------------------------------------------- layout


@pytest.mark.parametrize("stride", [1, 2])
def test_batches_have_the_contract_layout_and_the_plan_index(stride):
    be = backend(cfg=strided(DEFAULT, stride))
    plans = [plan([3, 0, 5]), plan([1, 2]), plan([6])]  # variable N up to batch_size
    batches = list(be.iterate(iter(plans)))
    assert len(batches) == 3
    for batch, p in zip(batches, plans, strict=True):
        check_layout(batch, len(p.indices), stride)
        assert batch["index"].tolist() == p.indices.tolist()
        assert batch["image"].is_contiguous() and batch["offset"].is_contiguous()


def test_graph_matches_the_reference_kernels_sample_by_sample():
    # the same parameters through DALI (CPU) and augment_sample: masks exact, the image within the documented
    # rounding (linear warp <= 1 grey level); the targets are the definition applied to the batch's own masks
    cache = MemCache(n=6)
    cfg = strided(DEFAULT, 2)
    be = backend(cache, batch_size=6, cfg=cfg)
    p = plan(range(6), cfg)
    (batch,) = be.iterate(iter([p]))
    for j, i in enumerate(p.indices):
        ref = augment_sample(cache.arrays(int(i)), p.params[j], cfg, out_hw=OUT)
        assert np.array_equal(batch["semantic"][j].numpy(), ref["semantic"])
        assert np.array_equal(batch["instance"][j].numpy(), ref["instance"])
        grey = np.abs(batch["image"][j].numpy() - normalize_image(ref["image"], cfg.normalize.mean, cfg.normalize.std))
        grey *= 255 * np.array([0.229, 0.224, 0.225])[:, None, None]
        assert np.mean(grey > 1.01) < 0.01, f"sample {i}: {np.mean(grey > 1.01):.4f} of values off by > 1 level"
        heat, offset = center_targets(batch["instance"][j].numpy(), 8.0, stride=2)
        assert np.array_equal(batch["heatmap"][j, 0].numpy(), heat)
        assert np.array_equal(batch["offset"][j].numpy(), offset)
        assert np.array_equal(batch["semantic_weight"][j].numpy(), semantic_weights(batch["instance"][j].numpy()))
        center, offset_weight = panoptic_weights(batch["semantic"][j].numpy(), batch["instance"][j].numpy(), stride=2)
        assert np.array_equal(batch["center_weight"][j, 0].numpy(), center)
        assert np.array_equal(batch["offset_weight"][j, 0].numpy(), offset_weight)


def test_identity_is_a_pure_copy_when_sizes_match():
    # same size, no augmentation: the forward affine is the identity, every output equals the input
    cache = MemCache(n=1)
    h, w = cache.image_size(0)
    be = backend(cache, cfg=NONE, batch_size=1, prefetch=1, out_size=(h, w))
    (batch,) = be.iterate(iter([BatchPlan(np.array([0]), (identity_params(),))]))
    a = cache.arrays(0)
    assert np.array_equal(batch["semantic"][0].numpy(), a["semantic"])
    assert np.array_equal(batch["instance"][0].numpy(), a["instance"])
    heat, offset = center_targets(a["instance"])
    assert np.array_equal(batch["heatmap"][0, 0].numpy(), heat) and np.array_equal(batch["offset"][0].numpy(), offset)
    image = batch["image"][0].numpy() * (255 * np.array([0.229, 0.224, 0.225]))[:, None, None]
    image += (255 * np.array([0.485, 0.456, 0.406]))[:, None, None]
    np.testing.assert_allclose(image.transpose(1, 2, 0), a["image"], atol=1e-3)


def test_flip_is_exact_for_the_masks_and_the_targets_follow():
    cache = MemCache(n=1)
    h, w = cache.image_size(0)
    cfg = AugmentConfig.none().replace(geometry=dataclasses.replace(NONE.geometry, flip_x=1.0))
    be = backend(cache, cfg=cfg, batch_size=1, prefetch=1, out_size=(h, w))
    (batch,) = be.iterate(iter([BatchPlan(np.array([0]), (SampleParams(flip_x=True),))]))
    a = cache.arrays(0)
    assert np.array_equal(batch["semantic"][0].numpy(), a["semantic"][:, ::-1])
    assert np.array_equal(batch["instance"][0].numpy(), a["instance"][:, ::-1])
    _, offset = center_targets(a["instance"])
    flipped = offset[:, :, ::-1] * np.array([1.0, -1.0], np.float32)[:, None, None]  # dx changes sign
    assert np.array_equal(batch["offset"][0].numpy(), flipped)


def test_none_config_leaves_photometric_ops_out_of_the_graph():
    assert not PhotometricOps.from_config(NONE.photometric).any
    assert PhotometricOps.from_config(DEFAULT.photometric) == PhotometricOps(True, True, True, True)
    spec = GraphSpec.create(out_size=OUT, augment=NONE, device="cpu")
    assert spec.inputs == ("image", "image_len", "sem", "ins", "image_affine")
    with pytest.raises(ValueError, match="noise"):
        param_columns(ParamsBatch.of([SampleParams(noise_sigma=3.0, noise_offset=(1, 2))]), np.array([[24, 40]]), spec)


def test_parameter_columns_have_documented_dtypes_and_shapes():
    spec = GraphSpec.create(out_size=OUT, augment=DEFAULT, device="cpu")
    params = SampleParams(flip_x=True, angle=30.0, scale=1.2, shift=(0.1, -0.1), noise_sigma=2.0, noise_offset=(7, 3))
    t = param_columns(ParamsBatch.of([params, SampleParams()]), np.array([[24, 40], [26, 40]]), spec)
    assert {k: (v.dtype, v.shape) for k, v in t.items()} == {
        "image_affine": (np.float32, (2, 2, 3)),
        "scalars": (np.float32, (2, 10)),
        "noise_anchor": (np.int32, (2, 2)),
    }
    assert t["noise_anchor"].tolist() == [[7, 3], [0, 0]]


def test_cpu_graph_gets_decoded_labels_padded_with_the_warps_fill():
    cache = MemCache()
    members = [cache.read_members(i) for i in (2, 1)]  # 28 and 26 rows
    layouts = [checked_label_layouts(m.semantic, m.instance, cache.image_size(i)) for m, i in zip(members, (2, 1), strict=True)]
    counts = [len(m.meta["instances"]) for m in members]
    got = cpu_label_columns([m.semantic for m in members], [m.instance for m in members], layouts, counts)
    assert got["sem"].dtype == np.uint8 and got["ins"].dtype == np.int16 and got["sem"].shape == (2, 28, 40, 1)
    for k, i in enumerate((2, 1)):
        h = cache.image_size(i)[0]
        assert np.array_equal(got["sem"][k, :h, :, 0], cache.arrays(i)["semantic"])
        assert np.array_equal(got["ins"][k, :h, :, 0], cache.arrays(i)["instance"].astype(np.int16))
        assert (got["sem"][k, h:] == 255).all() and (got["ins"][k, h:] == 0).all()  # what a warp reads outside


def test_a_batch_padded_past_its_column_bound_is_a_named_error_before_allocating():
    # the masks of 2 samples of 28 x 40 and 26 x 40 pad to 2 x 28 x 40 = 2240 pixels; the image members to 2 x longest
    cache = MemCache()
    members = [cache.read_members(i) for i in (2, 1)]
    layouts = [checked_label_layouts(m.semantic, m.instance, cache.image_size(i)) for m, i in zip(members, (2, 1), strict=True)]
    counts = [len(m.meta["instances"]) for m in members]
    columns = ([m.semantic for m in members], [m.instance for m in members], layouts, counts)
    assert cpu_label_columns(*columns, limit=2240)["sem"].shape == (2, 28, 40, 1)
    with pytest.raises(ConfigError, match=r"a batch of 2 samples padded to its largest mask size 28 x 40 \(pixels\) \(1120 each\) takes 2240, above the 2239 .* lower batch_size"):
        cpu_label_columns(*columns, limit=2239)
    images = [m.image for m in members]
    longest = max(len(b) for b in images)
    assert padded_bytes(images, limit=2 * longest)[0].shape == (2, longest)
    with pytest.raises(ConfigError, match=rf"padded to its largest member \(bytes\) \({longest} each\) takes {2 * longest}"):
        padded_bytes(images, limit=2 * longest - 1)


def test_gpu_label_columns_inflate_to_the_decoded_labels():
    # fn.decoders.inflate runs on the GPU only; here its arguments are replayed with the lz4 package, as nvCOMP
    # uses them: each band at its offset and size in the sample's `labels` row inflates to (rows, width); the
    # bands stack; the padded shape reshapes
    import lz4.block

    cache = MemCache()
    spec = GraphSpec.create(out_size=OUT, augment=DEFAULT, device="gpu")
    assert spec.inputs[:7] == ("image", "image_len", "labels", "sem_chunks", "sem_dims", "ins_chunks", "ins_dims")
    members = [cache.read_members(i) for i in (3, 0)]
    layouts = [checked_label_layouts(m.semantic, m.instance, cache.image_size(i)) for m, i in zip(members, (3, 0), strict=True)]
    got = gpu_label_columns([m.semantic for m in members], [m.instance for m in members], layouts)
    for k, m in enumerate(members):
        row = got["labels"][k].tobytes()
        for kind, dtype in (("sem", np.uint8), ("ins", np.int16)):
            bands, rows, width, *shape = got[f"{kind}_dims"][k].tolist()
            offsets, sizes = got[f"{kind}_chunks"][k, :, :bands]
            chunks = [
                np.frombuffer(lz4.block.decompress(row[o : o + s], uncompressed_size=rows * width * np.dtype(dtype).itemsize), dtype)
                for o, s in zip(offsets.tolist(), sizes.tolist(), strict=True)
            ]
            inflated = np.stack(chunks).reshape(shape)
            decoded = decode_label(m.semantic if kind == "sem" else m.instance, kind=kind, padded=True)
            assert np.array_equal(inflated[..., 0], decoded.view(dtype))
    for name in ("sem_chunks", "sem_dims", "ins_chunks", "ins_dims"):
        assert got[name].dtype == np.int32, name


def test_a_label_header_that_disagrees_with_the_index_is_named():
    cache = MemCache()
    members = cache.read_members(1)
    with pytest.raises(CacheError, match=r"26 x 40.*30 x 40"):
        checked_label_layouts(members.semantic, members.instance, (30, 40))
    with pytest.raises(CacheError, match=r"instance member"):
        checked_label_layouts(members.semantic, members.semantic, (26, 40))


# ----------------------------------------------------------------------------------------- plans and passes


def test_empty_plans_yield_empty_batches_in_place():
    be = backend()
    empty = BatchPlan(np.zeros(0, np.int64), ())
    plans = [plan([0, 1, 2]), empty, plan([3]), empty]
    batches = list(be.iterate(iter(plans)))
    assert [len(b["index"]) for b in batches] == [3, 0, 1, 0]
    for b, p in zip(batches, plans, strict=True):
        check_layout(b, len(p.indices))
    # a pass of nothing but empty plans never runs DALI, and the backend stays usable
    assert [len(b["index"]) for b in be.iterate(iter([empty, empty]))] == [0, 0]
    assert [b["index"].tolist() for b in be.iterate(iter([plan([4, 5])]))] == [[4, 5]]


def test_an_empty_plan_list_yields_nothing():
    be = backend()
    assert list(be.iterate(iter([]))) == []
    assert [b["index"].tolist() for b in be.iterate(iter([plan([1])]))] == [[1]]


@pytest.mark.parametrize("prefetch", [1, 3])
def test_an_abandoned_pass_leaks_no_stale_batch_into_the_next(prefetch):
    be = backend(prefetch=prefetch)
    first = be.iterate(iter([plan([i, i + 1]) for i in range(0, 6, 2)] * 3))
    assert next(first)["index"].tolist() == [0, 1]  # DALI now holds `prefetch` more batches of this pass
    first.close()
    second = [b["index"].tolist() for b in be.iterate(iter([plan([6]), plan([5, 4])]))]
    assert second == [[6], [5, 4]]
    # and an abandoned iterator that is simply dropped (never closed) is drained the same way
    dropped = be.iterate(iter([plan([0, 1, 2])] * 4))
    next(dropped)
    assert [b["index"].tolist() for b in be.iterate(iter([plan([3])]))] == [[3]]
    del dropped


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("fastload-feed", "fastload-io"))]


@pytest.mark.parametrize("workers", [0, 2])
def test_abandoned_passes_leave_nothing_running_after_close(workers):
    import psutil

    be = backend(prefetch=1, workers=workers)
    for _ in range(3):
        it = be.iterate(iter([plan([0, 1, 2])] * 20))
        next(it)
        it.close()  # abandoned with many plans left: the next pass cancels what its workers still had queued
    assert [b["index"].tolist() for b in be.iterate(iter([plan([3])]))] == [[3]]
    pids = be.worker_pids
    assert len(pids) == workers
    be.close()
    deadline = time.monotonic() + 5.0
    while (reader_threads() or any(psutil.pid_exists(p) for p in pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reader_threads() == []
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_a_killed_feed_worker_is_named_and_the_next_pass_starts_new_ones():
    import os
    import signal

    from fastload.pipeline.workers import WorkerDied

    be = backend(prefetch=1, workers=1)
    it = be.iterate(iter([plan([0, 1, 2])] * 50))
    next(it)
    (pid,) = be.worker_pids
    os.kill(pid, signal.SIGKILL)  # e.g. the out-of-memory killer
    with pytest.raises(WorkerDied, match=r"fastload-feed-0 \(pid \d+\) was killed by SIGKILL"):
        for _ in it:
            pass
    assert [b["index"].tolist() for b in be.iterate(iter([plan([3])]))] == [[3]]
    assert be.worker_pids and be.worker_pids != [pid]


def test_errors_in_the_plans_surface_in_order():
    def plans():
        yield plan([0])
        raise ValueError("the shell could not make plan 2")

    it = backend().iterate(plans())
    assert next(it)["index"].tolist() == [0]
    with pytest.raises(ValueError, match="plan 2"):
        next(it)


def test_a_superseded_iterator_stops_instead_of_stealing_batches():
    be = backend()
    old = be.iterate(iter([plan([0]), plan([1]), plan([2])]))
    next(old)
    new = be.iterate(iter([plan([4]), plan([5]), plan([6])]))
    assert next(new)["index"].tolist() == [4]
    with pytest.raises(RuntimeError, match="superseded"):
        next(old)
    assert next(new)["index"].tolist() == [5]
    be.close()  # close() ends open iterators too, and the backend can run again
    with pytest.raises(RuntimeError, match="close"):
        next(new)
    assert [b["index"].tolist() for b in be.iterate(iter([plan([6])]))] == [[6]]


def test_results_do_not_change_when_later_batches_arrive():
    # CPU tensors are views of DALI's outputs; later iterations must not overwrite earlier batches
    be = backend()
    plans = [plan([i % 7, (i + 1) % 7]) for i in range(6)]
    kept = list(be.iterate(iter(plans)))
    again = list(be.iterate(iter(plans)))
    for a, b in zip(kept, again, strict=True):
        for key in BATCH_KEYS:
            assert torch.equal(a[key], b[key]), key


def test_same_plan_gives_identical_batches_across_backends():
    a = [b for b in backend().iterate(iter([plan([0, 1, 2], epoch=3)]))]
    b = [b for b in backend(batch_size=4, prefetch=1).iterate(iter([plan([0, 1, 2], epoch=3)]))]
    for key in BATCH_KEYS:
        assert torch.equal(a[0][key], b[0][key]), key


# ----------------------------------------------------------------------------------------------- errors


def test_a_corrupt_member_names_the_shard_and_samples():
    be = backend(MemCache(corrupt=(4,)))
    it = be.iterate(iter([plan([0, 1]), plan([3, 4]), plan([5])]))
    assert next(it)["index"].tolist() == [0, 1]
    with pytest.raises(CacheError, match=r"shard-00000\.tar:00000004") as info:
        next(it)
    assert "00000003" in str(info.value) and "verify" in str(info.value)
    # the failed pipeline is replaced: the backend keeps working
    assert [b["index"].tolist() for b in be.iterate(iter([plan([5, 6])]))] == [[5, 6]]


def test_a_cache_read_error_surfaces_as_is_after_the_batches_before_it():
    be = backend(MemCache(unreadable=(2,)))
    it = be.iterate(iter([plan([0]), plan([1]), plan([2]), plan([3])]))
    assert [next(it)["index"].tolist() for _ in range(2)] == [[0], [1]]
    with pytest.raises(CacheError, match="CRC-32") as info:
        next(it)
    assert "00000002" in str(info.value)
    assert [b["index"].tolist() for b in be.iterate(iter([plan([0, 1])]))] == [[0, 1]]


def test_only_decoder_failures_become_cache_errors():
    decoder = RuntimeError(
        "Error in MIXED operator `nvidia.dali.fn.decoders.image`,\nencountered:\n\nbad JPEG\n"
    )
    failure = named_failure(["shard-00001.tar:00000007 (cache index 7)"], decoder)
    assert isinstance(failure, CacheError) and "00000007" in str(failure) and "bad JPEG" in str(failure)
    # verify decodes with OpenCV, so it may pass: the message says so, and gives the fix that works then
    assert "fastload cache verify" in str(failure) and "If verify passes" in str(failure)
    assert "re-encode that image file (e.g. as PNG)" in str(failure)
    other = RuntimeError(
        "Error in GPU operator `nvidia.dali.fn.warp_affine`,\nencountered:\n\nout of memory\n"
    )
    assert named_failure(["s:k (cache index 3)"], other) is other  # not blamed on the data
    assert "cache index 3" in " ".join(other.__notes__)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"device": "tpu"}, "device must be one of"),
        ({"prefetch": 0}, "prefetch"),
        ({"augment": strided(NONE, 4), "out_size": (30, 48)}, "divisible"),
    ],
)
def test_arguments_are_checked(overrides, message):
    kwargs = dict(
        cache=MemCache(), out_size=OUT, augment=NONE, device="cpu", batch_size=1, num_threads=1,
        prefetch=1,
    )  # fmt: skip
    with pytest.raises(ValueError, match=message):
        DaliBackend(**{**kwargs, **overrides})


# ------------------------------------------------------------------------------------------------ imports


def test_importing_fastload_and_the_backend_module_does_not_import_dali():
    code = (
        "import sys, fastload, fastload.pipeline.dali, fastload.loader; "
        "assert not any(m.startswith('nvidia.dali') for m in sys.modules), 'DALI imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_dali_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(ImportError, match="pip install nvidia-dali"):
        backend()


# ---- nvCOMP: the GPU inflate's library ------------------------------------------------------------------


def test_a_missing_nvcomp_is_named_with_its_install_command_not_as_a_bad_sample(monkeypatch):
    error = RuntimeError("dlopen libnvcomp.so failed ... nvComp error (11)")
    failure = named_failure(["shard-00000.tar:00000001 (cache index 1)"], error)
    assert "nvidia-libnvcomp-cu12" in str(failure) and "verify" not in str(failure).split("The cache is fine")[0]
    assert "rebuilding or verifying it changes nothing" in str(failure)


def test_nvcomp_is_found_beside_dali_or_on_the_loader_path(monkeypatch, tmp_path):
    import ctypes

    from fastload.pipeline.dali import nvcomp as dali_mod

    fake = tmp_path / "nvidia" / "dali" / "__init__.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("")
    monkeypatch.setattr("nvidia.dali.__file__", str(fake))

    def no_library(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_library)
    assert not dali_mod.nvcomp_available()
    lib = tmp_path / "nvidia" / "libnvcomp" / "lib64"
    lib.mkdir(parents=True)
    (lib / "libnvcomp.so.5").write_bytes(b"")
    assert dali_mod.nvcomp_available()  # where the nvidia-libnvcomp wheel puts it, DALI's own search path
