"""Damaged caches at read time: both loaders and ``open_cache(...)[i]`` raise, quickly, naming shard and sample.

Every damage is one a disk, a copy or a network file system can do: a flipped byte in an image member or in
a label member, a shard cut short or deleted (before the loader opens the cache, or while it runs), a shard
index edited into other valid JSON. The contract: the loader raises a `CacheError` (a `ValueError` naming the
``cache`` argument when it is found at construction) whose message names the shard file and, once reading,
the sample; it never hangs (each iteration runs under a deadline) and every batch it yields before the error
is bit-identical to the batch of an undamaged cache (never a silently wrong sample).
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path

import pytest
import torch
from loader_kit import LOADER_KINDS, make_loader, make_synth_cache

from fastload.errors import CacheError
from fastload.samples import open_cache

DEADLINE_S = 60.0  # a hang fails here; a healthy iteration takes well under a second
BAD = 5  # the damaged sample: shard-00001.tar (4 samples per shard), key 00000005
BAD_SHARD, BAD_KEY = "shard-00001.tar", "00000005"
LOADER_ARGS = dict(batch_size=2, shuffle=False, augment="default", seed=3)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return make_synth_cache(tmp_path_factory.mktemp("reliability_cache"), n=12, samples_per_shard=4)


@pytest.fixture(scope="module")
def reference(clean) -> dict[str, list[dict]]:
    """Every batch of one pass over the undamaged cache, per loader kind."""
    out = {}
    for kind in LOADER_KINDS:
        loader = make_loader(kind, clean, **LOADER_ARGS)
        out[kind] = list(loader)
        loader.close()
    return out


@pytest.fixture
def cache(clean, tmp_path) -> Path:
    root = tmp_path / "cache"
    shutil.copytree(clean, root)
    return root


def within_deadline(fn, seconds: float = DEADLINE_S):
    """Run ``fn()`` in a thread; return ``(result, exception)``; fail if it is still running at the deadline."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: a hang"
    return box.get("result"), box.get("error")


def _member(cache: Path, index: int, kind: str) -> tuple[Path, dict]:
    ds = open_cache(cache)
    shard = ds.read_members(index).shard
    entry = json.loads((cache / shard.replace(".tar", ".json")).read_text())
    [sample] = [s for s in entry["samples"] if s["key"] == ds.key(index)]
    [member] = [m for m in sample["members"] if m["kind"] == kind]
    return cache / shard, member


def flip_member_byte(cache: Path, index: int, kind: str) -> None:
    tar, member = _member(cache, index, kind)
    data = bytearray(tar.read_bytes())
    data[member["offset"] + member["size"] // 2] ^= 0x10
    tar.write_bytes(bytes(data))


def truncate_shard_at_sample(cache: Path, index: int) -> None:
    """Cut the shard in the middle of the sample's image member (the samples before it stay readable)."""
    tar, member = _member(cache, index, "image")
    with open(tar, "r+b") as fh:
        fh.truncate(member["offset"] + member["size"] // 2)


def _iterate(kind: str, cache: Path, **kwargs):
    """Construct a loader and iterate one pass, collecting batches; return (batches, error)."""
    batches: list[dict] = []

    def run():
        loader = make_loader(kind, cache, **LOADER_ARGS, **kwargs)
        try:
            for batch in loader:
                batches.append(batch)
        finally:
            loader.close()

    _, error = within_deadline(run)
    return batches, error


def _assert_named_failure(batches, error, reference, *, damaged=(BAD,)) -> None:
    """``error`` names the shard and a damaged sample; the batches before it are the undamaged ones."""
    assert isinstance(error, CacheError), f"expected a CacheError, got {error!r}"
    message = str(error)
    assert BAD_SHARD in message, message
    found = re.search(r"cache index (\d+)\)", message)
    assert found, message
    failed = int(found.group(1))
    assert failed in damaged and f"{failed:08d}" in message, message
    # nothing from the failing batch on was yielded, and what came before is bit-identical to the reference
    assert len(batches) <= failed // LOADER_ARGS["batch_size"]
    for got, want in zip(batches, reference, strict=False):
        for key in want:
            assert torch.equal(got[key], want[key]), key


KIND_SETUPS = [
    pytest.param("cpu", {}, id="cpu"),
    pytest.param("cpu", {"num_threads": 2}, id="cpu-2-workers"),
    pytest.param("dali", {}, id="dali"),
]

MEMBER_KINDS = ["image", "sem", "ins", "meta"]


# ----------------------------------------------------------------------------------------------- open_cache


@pytest.mark.parametrize("member", MEMBER_KINDS)
def test_open_cache_item_with_a_flipped_byte_names_shard_and_sample(cache, member):
    flip_member_byte(cache, BAD, member)
    ds = open_cache(cache)
    for read in (ds.__getitem__, ds.read_members):
        _, error = within_deadline(lambda read=read: read(BAD))
        assert isinstance(error, CacheError) and BAD_SHARD in str(error) and BAD_KEY in str(error), error
        assert "CRC-32" in str(error)
    ds[BAD - 1], ds[BAD + 1]  # noqa: B018 - its neighbours still read


def test_open_cache_item_of_a_shard_cut_short_or_deleted_while_open(cache):
    ds = open_cache(cache)
    truncate_shard_at_sample(cache, BAD)
    ds[BAD - 1]  # the samples before the cut are intact
    with pytest.raises(CacheError, match=rf"{BAD_SHARD}, sample {BAD_KEY} .*ends early"):
        ds[BAD]
    with pytest.raises(CacheError, match=rf"shard {BAD_SHARD} has \d+ bytes, the manifest says"):
        open_cache(cache)
    (cache / BAD_SHARD).unlink()
    with pytest.raises(CacheError, match=rf"shard {BAD_SHARD} is missing"):
        open_cache(cache)


def test_open_cache_item_of_a_shard_deleted_after_opening_names_the_sample(cache):
    ds = open_cache(cache)  # the shard's file is opened lazily, at its first read
    (cache / BAD_SHARD).unlink()
    with pytest.raises(CacheError, match=rf"{BAD_SHARD}, sample {BAD_KEY} .*missing"):
        ds[BAD]
    ds[0]  # other shards still read


def test_an_edited_shard_index_is_refused_at_open(cache):
    # valid JSON, valid schema, plausible values: only the manifest's sha256 of the index can tell; without
    # the check the DALI loader would warp sample 5 with an affine made for the wrong image size
    index = cache / BAD_SHARD.replace(".tar", ".json")
    text = index.read_text()
    assert text.count('"height":48') == 4
    index.write_text(text.replace('"height":48', '"height":47', 1))
    with pytest.raises(CacheError, match=r"shard index shard-00001\.json .*sha256"):
        open_cache(cache)


# ----------------------------------------------------------------------------------------------- loaders


@pytest.mark.parametrize(("kind", "extra"), KIND_SETUPS)
@pytest.mark.parametrize("member", ["image", "ins"])
def test_loader_on_a_flipped_byte_raises_naming_shard_and_sample(kind, extra, member, cache, reference):
    flip_member_byte(cache, BAD, member)
    batches, error = _iterate(kind, cache, **extra)
    _assert_named_failure(batches, error, reference[kind])


@pytest.mark.parametrize("kind", LOADER_KINDS)
@pytest.mark.parametrize("member", ["sem", "meta"])
def test_loader_on_a_flipped_byte_in_the_other_members(kind, member, cache, reference):
    flip_member_byte(cache, BAD, member)
    batches, error = _iterate(kind, cache)
    _assert_named_failure(batches, error, reference[kind])


@pytest.mark.parametrize("kind", LOADER_KINDS)
@pytest.mark.parametrize("damage", ["truncated", "missing", "index-edited"])
def test_loader_refuses_a_damaged_cache_at_construction_naming_the_file(kind, damage, cache):
    if damage == "truncated":
        truncate_shard_at_sample(cache, BAD)
    elif damage == "missing":
        (cache / BAD_SHARD).unlink()
    else:
        index = cache / BAD_SHARD.replace(".tar", ".json")
        index.write_text(index.read_text().replace('"height":48', '"height":47', 1))
    _, error = within_deadline(lambda: make_loader(kind, cache, **LOADER_ARGS))
    # found at construction: a ValueError about the `cache` argument, caused by the CacheError
    assert isinstance(error, ValueError) and isinstance(error.__cause__, CacheError), repr(error)
    name = BAD_SHARD if damage != "index-edited" else BAD_SHARD.replace(".tar", ".json")
    assert str(error).startswith("cache: ") and name in str(error), str(error)


@pytest.mark.parametrize(("kind", "extra"), KIND_SETUPS)
@pytest.mark.parametrize("damage", ["truncated", "missing"])
@pytest.mark.parametrize("when", ["after-open", "while-running"])
def test_loader_raises_when_a_shard_is_cut_or_deleted_under_it(kind, extra, damage, when, cache, reference):
    # the loader opened the cache (its worker processes and reader threads open shard files lazily); the
    # damage comes before the first batch is asked for, or after it, while batches are already in flight
    batches: list[dict] = []

    def spoil():
        if damage == "truncated":
            truncate_shard_at_sample(cache, BAD)
        else:
            (cache / BAD_SHARD).unlink()

    def run():
        loader = make_loader(kind, cache, **LOADER_ARGS, **extra)
        try:
            if when == "after-open":
                spoil()
            for batch in loader:
                if when == "while-running" and not batches:
                    spoil()
                batches.append(batch)
        finally:
            loader.close()

    _, error = within_deadline(run)
    # a missing shard fails at its first sample; a cut one at the sample the cut runs through, or later
    damaged = range(4, 8) if damage == "missing" else range(BAD, 8)
    if when == "after-open":
        _assert_named_failure(batches, error, reference[kind], damaged=(damaged[0],))
        return
    # while running: samples read before the damage are intact, and a descriptor opened before an unlink
    # keeps reading the file (POSIX), so the pass may end cleanly; then every batch must be the undamaged one
    if error is None:
        assert len(batches) == len(reference[kind])
        for got, want in zip(batches, reference[kind], strict=True):
            assert all(torch.equal(got[k], want[k]) for k in want)
        return
    _assert_named_failure(batches, error, reference[kind], damaged=damaged)
