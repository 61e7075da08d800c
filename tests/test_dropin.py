"""A DataLoader script's drop-in: DataLoader's arguments on both loaders, tuples, classes, and empty batches.

Each DataLoader keyword is accepted with its meaning or refused with a message that names the public loader and
what to use instead; `keys=` yields tuples in the order asked; `classes` / `num_classes` agree with the cache's
categories and with a model's logits on the real photos; an empty batch (N = 0) gives a zero loss that
backpropagates.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path

import cv2
import pytest
import torch
import torch.nn.functional as F
from loader_kit import LOADER_KINDS, make_loader, make_synth_cache

from fastload import CpuLoader, Loader, open_cache
from fastload.pipeline.plan import BATCH_KEYS
from fastload.tools.bench.model import SegNet, segnet_loss

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
PUBLIC = {"cpu": "CpuLoader", "dali": "Loader"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_synth_cache(tmp_path_factory.mktemp("dropin"), n=6)


# --- DataLoader's keywords: accepted with a meaning, or refused naming the public loader ---------------------


@pytest.mark.parametrize("kind", LOADER_KINDS)
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"sampler": object()}, TypeError, "sampler= is torch DataLoader's .* shuffle= and seed= .* rank=/world_size="),
        ({"batch_sampler": object()}, TypeError, "batch_sampler= is torch DataLoader's .* batch_size=, drop_last="),
        ({"collate_fn": list}, TypeError, r"collate_fn= is torch DataLoader's .* keys=\('image', 'semantic'\)"),
        ({"multiprocessing_context": "fork"}, TypeError, "forkserver"),
        ({"pin_memory_device": "cuda"}, TypeError, "device='cuda:N'"),
        ({"in_order": False}, TypeError, "in order"),
        ({"dataset": object()}, TypeError, r"pass it first"),
        ({"timeout": 5}, ValueError, "timeout=5 is not supported, only 0"),
        ({"timeout": -1}, ValueError, "timeout must be a non-negative number"),
        ({"persistent_workers": False, "num_threads": 1}, ValueError, r"persistent_workers=False cannot be honoured: .* loader\.close\(\)"),
        ({"num_workers": 2, "num_threads": 3}, ValueError, "num_workers=2 and num_threads=3 disagree"),
        ({"prefetch_factor": 0}, ValueError, "prefetch_factor must be a positive integer"),
        ({"prefetch_factor": 10**9}, ValueError, r"prefetch_factor=1000000000 x \d+ producer\(s\) = \d+ batches ahead, above the 64"),
        ({"prefetch_factor": 2, "prefetch": 3}, ValueError, "not both"),
        ({"generator": torch.Generator(), "seed": 4}, ValueError, "seed=4 or a generator"),
        ({"generator": 7}, TypeError, "generator must be a torch.Generator"),
        ({"pin_memory": "yes"}, ValueError, "pin_memory must be True or False"),
        ({"worker_init_fn": 3}, TypeError, "worker_init_fn must be callable"),
        ({"keys": ("image", "mask")}, ValueError, r"keys \['mask'\] are not batch keys; a batch has \['image', "),
        ({"keys": "image"}, ValueError, "keys must be a non-empty tuple"),
        ({"num_workr": 2}, TypeError, r"got an unexpected keyword argument 'num_workr' \(did you mean 'num_workers'\?\)"),
    ],
)
def test_dataloader_keywords_refused_with_the_equivalent(kind, cache, kwargs, error, message):
    with pytest.raises(error) as info:
        make_loader(kind, cache, batch_size=2, **kwargs)
    text = str(info.value)
    assert re.search(message, text), text
    assert "_LoaderShell" not in text
    if error is TypeError and "callable" not in text and "torch.Generator" not in text:
        assert text.startswith(PUBLIC[kind]), text  # names the class the user called


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_an_unknown_keyword_names_the_loader_and_lists_its_arguments(kind, cache):
    with pytest.raises(TypeError) as info:
        make_loader(kind, cache, batch_size=2, colour="red")
    text = str(info.value)
    assert text.startswith(f"{PUBLIC[kind]}() got an unexpected keyword argument 'colour'")
    for name in ("cache", "batch_size", "shuffle", "num_threads", "keys", "num_workers", "worker_init_fn"):
        assert name in text.split("accepts:")[1]


@pytest.mark.parametrize("cls", [Loader, CpuLoader])
def test_python_own_argument_errors_name_the_public_class(cls, cache):
    with pytest.raises(TypeError, match=rf"^{cls.__name__}\.__init__\(\) got multiple values for argument 'batch_size'"):
        cls(cache, 2, batch_size=2)
    with pytest.raises(TypeError, match=rf"^{cls.__name__}\.__init__\(\) missing 1 required positional argument: 'cache'"):
        cls()
    with pytest.raises(TypeError, match=rf"^{cls.__name__}: batch_size is required, e\.g\. {cls.__name__}\(cache, 48\)"):
        cls(cache)


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_dataloader_defaults_and_accepted_keywords_pass(kind, cache):
    loader = make_loader(
        kind, cache, batch_size=2, sampler=None, batch_sampler=None, collate_fn=None, multiprocessing_context=None,
        pin_memory_device="", in_order=True, pin_memory=True, persistent_workers=True, timeout=0,
    )  # fmt: skip
    with loader:
        assert sum(len(b["index"]) for b in loader) == 6


def test_batch_size_is_positional_as_in_dataloader(cache):
    with CpuLoader(cache, 4, size=(32, 32), device="cpu", num_workers=0) as loader:
        assert loader.batch_size == 4 and len(loader) == 2
        assert [len(b["index"]) for b in loader] == [4, 2]


def test_num_workers_is_num_threads(cache):
    assert CpuLoader(cache, 2, device="cpu", num_workers=0).num_threads == 0  # in-process, as DataLoader's 0
    assert CpuLoader(cache, 2, device="cpu", num_workers=3, num_threads=3).num_threads == 3
    assert Loader(cache, 2, device="cpu", num_workers=3).num_threads == 3
    with pytest.raises(ValueError, match="CpuLoader.* loads in the calling process"):
        Loader(cache, 2, device="cpu", num_workers=0)  # DALI needs a thread; the message names the way out


def test_prefetch_factor_is_per_worker_process(cache):
    assert CpuLoader(cache, 2, device="cpu", num_workers=3, prefetch_factor=2).prefetch == 6
    assert CpuLoader(cache, 2, device="cpu", num_workers=0, prefetch_factor=2).prefetch == 2
    assert Loader(cache, 2, device="cpu", num_threads=4, prefetch_factor=3).prefetch == 3  # DALI: one pipeline


def test_persistent_workers_false_is_fine_without_workers(cache):
    assert CpuLoader(cache, 2, device="cpu", num_workers=0, persistent_workers=False).num_threads == 0


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_generator_gives_the_seed_drawn_from_it(kind, cache):
    expected = int(torch.empty((), dtype=torch.int64).random_(generator=torch.Generator().manual_seed(7)).item())
    generator = torch.Generator().manual_seed(7)
    with make_loader(kind, cache, batch_size=4, generator=generator) as drawn:
        assert drawn.seed == expected
        order = [b["index"].tolist() for b in drawn]
    with make_loader(kind, cache, batch_size=4, seed=expected) as seeded:
        assert [b["index"].tolist() for b in seeded] == order  # the same epoch order as that seed gives
    assert make_loader(kind, cache, batch_size=4, generator=generator).seed != expected  # the generator moved on


def _mark_worker(folder: Path, worker_id: int) -> None:
    # proves the call, its process, and that fastload's own set-up (one OpenCV thread) ran before it
    (folder / f"worker-{worker_id}").write_text(f"{os.getpid()} {cv2.getNumThreads()}")


def test_worker_init_fn_runs_in_each_worker_after_fastloads_setup(cache, tmp_path):
    fn = functools.partial(_mark_worker, tmp_path)
    with CpuLoader(cache, 2, size=(32, 32), device="cpu", num_workers=2, worker_init_fn=fn) as loader:
        assert sum(len(b["index"]) for b in loader) == 6
    marks = sorted(p.name for p in tmp_path.iterdir())
    assert marks == ["worker-0", "worker-1"]
    for name in marks:
        pid, threads = (tmp_path / name).read_text().split()
        assert int(pid) != os.getpid() and threads == "1"


def test_worker_init_fn_on_dali_says_why_it_cannot_apply(cache, tmp_path):
    with pytest.raises(ValueError, match="Loader: worker_init_fn cannot apply to the .dali-cpu. backend: DALI decodes and augments"):
        Loader(cache, 2, device="cpu", worker_init_fn=functools.partial(_mark_worker, tmp_path))


# --- tuples for `for image, target in loader` ---------------------------------------------------------------


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_keys_yield_tuples_in_the_order_asked(kind, cache):
    with make_loader(kind, cache, batch_size=4, seed=3) as plain:
        dicts = list(plain)
    with make_loader(kind, cache, batch_size=4, seed=3, keys=("semantic", "image", "index")) as tupled:
        tuples = list(tupled)
    assert len(tuples) == len(dicts) == 2
    for got, want in zip(tuples, dicts, strict=True):
        assert isinstance(got, tuple) and len(got) == 3
        for tensor, key in zip(got, ("semantic", "image", "index"), strict=True):
            assert torch.equal(tensor, want[key]), key


def test_every_batch_key_can_be_asked_for(cache):
    with CpuLoader(cache, 6, size=(32, 32), device="cpu", num_workers=0, keys=BATCH_KEYS) as loader:
        (batch,) = list(loader)
    assert [t.shape[0] for t in batch] == [6] * len(BATCH_KEYS)


# --- semantic-only training: no targets rendered -----------------------------------------------------------


def _refuse_rendering(monkeypatch) -> None:
    """Make every target kernel raise: a loader that calls one fails the test (the CPU engine renders in its
    workers, which `make_loader` runs in-process, and the DALI engine in the main process: the patch reaches both)."""
    import fastload.pipeline.batch as batch_module
    import fastload.targets as targets_module

    def refuse(*args, **kwargs):
        raise AssertionError("a target kernel ran although no targets were asked for")

    for module in (batch_module, targets_module):
        for name in ("sample_targets", "panoptic_weights", "render_targets", "render_weights"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_targets_none_returns_no_target_keys_and_renders_nothing(kind, cache, monkeypatch):
    from fastload.augment.config import AugmentConfig

    with make_loader(kind, cache, batch_size=4, seed=3, augment="default") as plain:
        dicts = list(plain)
    _refuse_rendering(monkeypatch)
    cfg = dataclasses.replace(AugmentConfig.default(), targets=None)
    with make_loader(kind, cache, batch_size=4, seed=3, augment=cfg) as loader:
        batches = list(loader)
    assert [tuple(b) for b in batches] == [("image", "semantic", "instance", "index")] * 2
    for got, want in zip(batches, dicts, strict=True):
        for key in got:  # the same samples, augmented the same way: only the targets are missing
            assert torch.equal(got[key], want[key]), key


def test_targets_none_in_yaml(tmp_path):
    from fastload.augment.config import AugmentConfig, load_augment

    path = tmp_path / "semantic_only.yaml"
    path.write_text("geometry:\n  flip_x: 0.5\ntargets: none\n")
    cfg = AugmentConfig.from_yaml(path)
    assert cfg.targets is None and cfg.map_stride == 1 and cfg.geometry.flip_x == 0.5
    assert load_augment(str(path)) == cfg


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_keys_without_targets_render_none(kind, cache, monkeypatch):
    _refuse_rendering(monkeypatch)
    with make_loader(kind, cache, batch_size=4, keys=("image", "semantic")) as loader:
        pairs = list(loader)
    assert len(pairs) == 2 and all(len(pair) == 2 for pair in pairs)


def test_keys_asking_for_targets_that_are_off_are_refused(cache):
    from fastload.augment.config import AugmentConfig

    cfg = dataclasses.replace(AugmentConfig.default(), targets=None)
    with pytest.raises(ValueError, match=r"keys \['heatmap'\] are targets, but the augment config has `targets: none`"):
        CpuLoader(cache, 4, augment=cfg, keys=("image", "heatmap"), num_threads=0)


# --- classes, num_classes, dataset -------------------------------------------------------------------------


def test_classes_and_num_classes_agree_with_the_categories(sample_cache, sample_coco):
    import json

    categories = json.loads(sample_coco.read_text())["categories"]
    names = [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
    opened = open_cache(sample_cache)
    assert opened.classes == ("__background__", *names)
    assert opened.num_classes == len(opened.classes) == len(names) + 1 == opened.manifest.num_classes
    for category in opened.manifest.categories:  # classes[k] names train id k
        assert opened.classes[category.train_id] == category.name
    with CpuLoader(sample_cache, 6, size=(64, 64), device="cpu", num_workers=0) as loader:
        assert loader.classes == opened.classes and loader.num_classes == opened.num_classes
        assert len(loader.dataset) == len(opened) == 18
        assert loader.dataset[0]["meta"]["image_id"] == opened[0]["meta"]["image_id"]
        labels = set()
        for batch in loader:
            labels |= set(batch["semantic"].unique().tolist())
    assert labels - {255} == set(range(loader.num_classes))  # every class occurs, nothing beyond K


def test_a_model_with_num_classes_logits_trains_on_the_batches(sample_cache):
    torch.manual_seed(0)
    with Loader(sample_cache, 4, size=(64, 64), device="cpu", num_threads=2, keys=("image", "semantic")) as loader:
        image, target = next(iter(loader))
        model = SegNet(num_classes=loader.num_classes, width=4)
        logits = model(image)["semantic"]
        assert logits.shape[1] == loader.num_classes == 4
        loss = F.cross_entropy(logits, target, ignore_index=255)  # "Target 3 is out of bounds" with K logits
        assert torch.isfinite(loss)
        with pytest.raises(IndexError, match="out of bounds"):  # what K (foreground only) logits would do
            F.cross_entropy(logits[:, :-1], target, ignore_index=255)


def test_segnet_takes_the_logits_count():
    assert SegNet(num_classes=4, width=4)(torch.zeros(1, 3, 32, 32))["semantic"].shape[1] == 4
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        SegNet(num_classes=1)


# --- empty batches (N = 0): a zero loss that backpropagates ------------------------------------------------


def _empty_rank_batches(cache) -> list[dict]:
    # 6 samples, batch 1, 4 ranks: step 2 holds 2 samples, so ranks 2 and 3 get an empty batch
    with CpuLoader(cache, 1, size=(32, 32), device="cpu", num_workers=0, rank=3, world_size=4, shuffle=False) as loader:
        return list(loader)


def test_segnet_loss_on_an_empty_batch_is_zero_and_backpropagates(cache):
    batches = _empty_rank_batches(cache)
    assert [len(b["index"]) for b in batches] == [1, 0]
    model = SegNet(num_classes=5, width=4)
    pred = model(batches[1]["image"])
    loss = segnet_loss(pred, batches[1])
    for part in (loss.total, loss.semantic, loss.heatmap, loss.offset):
        assert part.item() == 0.0
    loss.total.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.equal(g, torch.zeros_like(g)) for g in grads)  # every rank joins the all-reduce


def test_the_readmes_empty_batch_line_avoids_the_nan(cache):
    (line,) = [b.strip() for b in re.findall(r"```python\n(.*?)```", README, flags=re.S) if "if len(target)" in b]
    empty = _empty_rank_batches(cache)[1]
    model = SegNet(num_classes=5, width=4)
    output = model(empty["image"])["semantic"]
    criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
    assert torch.isnan(criterion(output, empty["semantic"]))  # why the line is needed
    scope = {"criterion": criterion, "output": output, "target": empty["semantic"]}
    exec(line, {}, scope)  # noqa: S102 - the README's own line, run as documented
    assert scope["loss"].item() == 0.0
    scope["loss"].backward()
    semantic_path = [*model.stem.parameters(), *model.semantic_head.parameters()]
    assert all(p.grad is not None and not p.grad.any() for p in semantic_path)  # zero gradients, no NaN
