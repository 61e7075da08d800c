"""Hostile caches: content edited so that every CRC-32 and sha256 still agrees (`cacheforge.forge_sample`).

The README promises "never a silent wrong label, a named error instead". Each case below edits sample 5 of a
12-sample cache (shard-00001.tar, key 00000005) the way a careful user (or a buggy tool) could, re-hashing
everything, so only the content lies. Every path that reads it — ``open_cache(...)[i]``, CpuLoader in process
and in a worker, ``Loader(device="cpu")`` (DALI's graph) and ``fastload cache verify`` — must end in a
`CacheError` naming the shard, the sample and the field, never a wrong batch, a crash that names nothing, or a
runaway: the runaway cases run in a child whose address space may grow by 1.5 GB and CPU time by 5 s per path
(`cacheforge.read_bounded`), so a regression fails the test instead of the machine.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from cacheforge import forge_sample, label_member, lz4_band, read_bounded, read_member, read_through
from imagefactory import jpeg_declaring
from loader_kit import make_synth_cache

from fastload.cache.format import MAX_META_BYTES, decode_label, encode_label, rows_per_band
from fastload.cache.jsonio import loads_json
from fastload.cache.validate import check_label_bands, checked_label_layouts
from fastload.cache.verify import verify_cache
from fastload.errors import CacheError
from fastload.labels import MAX_INSTANCES
from fastload.samples import open_cache
from fastload.tools.cli import main

BAD, BAD_SHARD, BAD_KEY = 5, "shard-00001.tar", "00000005"
H, W = 48, 64  # the synthetic cache's images


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return make_synth_cache(tmp_path_factory.mktemp("hostile"), n=12, samples_per_shard=4)


# ----------------------------------------------------------------------------------------------- the edits


def _jpeg(height: int, width: int) -> bytes:
    return cv2.imencode(".jpg", np.full((height, width, 3), 90, np.uint8))[1].tobytes()


def _ins(cache: Path) -> np.ndarray:
    return decode_label(read_member(cache, BAD, "ins"), kind="ins").copy()


def _meta(cache: Path) -> dict:
    return json.loads(read_member(cache, BAD, "meta"))


def _bands(array: np.ndarray, rows: int) -> list[bytes]:
    padded = np.zeros((-(-array.shape[0] // rows) * rows, array.shape[1]), array.dtype)
    padded[: array.shape[0]] = array
    return [lz4_band(padded[k : k + rows].tobytes()) for k in range(0, len(padded), rows)]


def _smaller_image(c):
    forge_sample(c, BAD, image=_jpeg(24, 32))


def _image_bomb(c):
    forge_sample(c, BAD, image=jpeg_declaring(30000, 30000))


def _image_bomb_and_index(c):
    forge_sample(c, BAD, image=jpeg_declaring(30000, 30000), height=30000, width=30000)


def _ins_rows_per_band(c):  # the instance member in bands of 16 rows; the semantic one has the writer's 512
    forge_sample(c, BAD, ins=label_member(height=H, width=W, rows=16, bands=_bands(_ins(c), 16)))


def _ins_rows_2_31(c):
    forge_sample(c, BAD, ins=label_member(height=H, width=W, rows=2**31, bands=_bands(_ins(c), H)))


def _ins_dtype_code(c):  # the instance ids as uint8: half the bytes a uint16 band holds
    forge_sample(c, BAD, ins=encode_label(_ins(c).astype(np.uint8), kind="sem", level=0))


def _sem_dtype_code(c):
    sem = decode_label(read_member(c, BAD, "sem"), kind="sem")
    forge_sample(c, BAD, sem=encode_label(sem.astype(np.uint16), kind="ins", level=0))


def _ins_other_size(c):
    forge_sample(c, BAD, ins=encode_label(np.zeros((24, 32), np.uint16), kind="ins", level=0))


def _ins_20000(c):  # a valid 20000 x 20000 member of empty bands: 3.5 MB that inflate to 800 MB
    rows = rows_per_band(20000)
    band = lz4_band(bytes(rows * 20000 * 2))
    forge_sample(c, BAD, ins=label_member(height=20000, width=20000, rows=rows, bands=[band] * (20000 // rows)))


def _ins_short_band(c):  # one band holding half its rows: DALI's inflate would zero-fill the rest
    ins = _ins(c)
    raw = ins.tobytes()
    forge_sample(c, BAD, ins=label_member(height=H, width=W, rows=rows_per_band(W), bands=[lz4_band(raw[: len(raw) // 2])]))


def _ins_id_40000(c):
    ins = _ins(c)
    ins[16:32, 16:40] = 40000  # a block: a downscaling warp keeps some of it
    forge_sample(c, BAD, ins=encode_label(ins, kind="ins", level=0))


def _meta_million_instances(c):
    meta = _meta(c)
    meta["instances"] = [{}] * 1_000_000
    forge_sample(c, BAD, meta=json.dumps(meta, separators=(",", ":")).encode())


def _meta_nested(c):
    forge_sample(c, BAD, meta=b'{"a":' * 100_000 + b"1" + b"}" * 100_000)


def _meta_other_size(c):
    meta = _meta(c)
    meta["height"] = 2 * H
    forge_sample(c, BAD, meta=json.dumps(meta).encode())


# (edit, what every path's error must say after "shard ..., sample ...: ", runaway: run memory-bounded)
CASES = {
    "image-smaller": (_smaller_image, r"image member: its header declares 24 x 32 \(H x W\), the sample is 48 x 64", False),
    "image-30000-px": (_image_bomb, r"image member: its header declares 30000 x 30000 = 900000000 pixels, more than max_image_pixels \(100000000\)", True),
    "image-30000-px-index-too": (_image_bomb_and_index, r"index: the sample is 30000 x 30000 = 900000000 pixels, more than the cache's max_image_pixels \(100000000\)", True),
    "ins-rows-per-band": (_ins_rows_per_band, r"instance member header: 16 rows per band, a label 64 wide has 512", False),
    "ins-rows-2^31": (_ins_rows_2_31, r"instance member header: 2147483648 rows per band, a label 64 wide has 512", True),
    "ins-dtype-code": (_ins_dtype_code, r"instance member holds uint8, expected uint16 \(dtype code\)", False),
    "sem-dtype-code": (_sem_dtype_code, r"semantic member holds uint16, expected uint8 \(dtype code\)", False),
    "ins-other-size": (_ins_other_size, r"instance member is 24 x 32, the sample 48 x 64", False),
    "ins-20000-px": (_ins_20000, r"instance member is 20000 x 20000, the sample 48 x 64", True),
    "ins-short-band": (_ins_short_band, r"instance member decompresses to 3072 bytes, expected 65536", False),
    "ins-id-40000": (_ins_id_40000, r"instance member holds id 40000, above the \d+ instance\(s\) its meta lists; ids above 32767", True),
    "meta-1e6-instances": (_meta_million_instances, r"meta member lists 1000000 instances; a sample holds at most 32767", True),
    "meta-nested-100000": (_meta_nested, r"meta member nests 100000 levels deep, more than the 32", True),
    "meta-other-size": (_meta_other_size, r"meta member says 96 x 64, the index 48 x 64", False),
}
RUNAWAYS = [name for name, (_, _, runaway) in CASES.items() if runaway]
# what the Loader path cannot yet name: its feed decodes the instance member itself (fastload/pipeline/dali,
# being rewritten) without `fastload.cache.validate.check_instance_ids`

@pytest.fixture(params=list(CASES))
def hostile(request, clean, tmp_path) -> tuple[Path, str]:
    """A copy of the clean cache with one case's edit; (cache, the expected message after the sample's name)."""
    edit, expected, _ = CASES[request.param]
    cache = tmp_path / "cache"
    shutil.copytree(clean, cache)
    edit(cache)
    return cache, expected


def _names_it(message: str, expected: str, *, verify: bool = False) -> None:
    # verify: "shard-00001.tar sample 00000005: "; the readers: "shard shard-00001.tar, sample 00000005 (cache
    # index 5): ", or the DALI feed's "shard-00001.tar:00000005 (cache index 5): "
    where = rf"{BAD_SHARD} sample {BAD_KEY}: " if verify else rf"(shard {BAD_SHARD}, sample |{BAD_SHARD}:){BAD_KEY} \(cache index {BAD}\): "
    assert re.search(where + expected, message), message


# ----------------------------------------------------------------------------------------------- the paths


def test_forged_caches_pass_every_integrity_check(hostile):
    cache, _ = hostile
    ds = open_cache(cache)  # sizes and index sha256s agree with the manifest
    for i in (0, 4, 6, 11):
        ds[i]  # the other samples read as before
    problems = verify_cache(cache).problems
    assert not any("sha256" in p or "CRC" in p or "bytes, the manifest" in p for p in problems), problems


def test_open_cache_names_shard_sample_and_field(hostile):
    cache, expected = hostile
    with pytest.raises(CacheError) as info:
        open_cache(cache)[BAD]
    _names_it(str(info.value), expected)


def test_verify_reports_the_sample_and_goes_on(hostile, capsys):
    cache, expected = hostile
    report = verify_cache(cache)
    assert report.samples == 12 and len(report.problems) == 1, report.problems
    _names_it(report.problems[0], expected, verify=True)
    assert main(["cache", "verify", str(cache), "--no-progress"]) == 1
    _names_it(capsys.readouterr().err, expected, verify=True)


def test_cpu_loader_names_shard_sample_and_field(hostile):
    cache, expected = hostile
    with pytest.raises(CacheError) as info:
        read_through("cpu", cache)
    _names_it(str(info.value), expected)


@pytest.mark.parametrize("case", ["image-smaller", "ins-rows-per-band", "ins-id-40000", "meta-nested-100000"])
def test_cpu_loader_workers_name_shard_sample_and_field(clean, tmp_path, case):
    edit, expected, _ = CASES[case]
    cache = tmp_path / "cache"
    shutil.copytree(clean, cache)
    edit(cache)
    with pytest.raises(CacheError) as info:
        read_through("cpu-worker", cache)
    _names_it(str(info.value), expected)


def test_dali_loader_names_shard_sample_and_field(hostile):
    cache, expected = hostile
    with pytest.raises(CacheError) as info:
        read_through("dali", cache)
    _names_it(str(info.value), expected)


@pytest.mark.parametrize("case", RUNAWAYS)
def test_runaways_end_in_a_named_error_within_bounds(clean, tmp_path, case):
    edit, expected, _ = CASES[case]
    cache = tmp_path / "cache"
    shutil.copytree(clean, cache)
    edit(cache)
    paths = ["open_cache", "cpu", "verify", "dali"]
    result = read_bounded(cache, clean, paths, memory_gb=1.5, cpu_s=5.0)
    for path in paths:
        got = result[path]
        assert got["error"] == "CacheError", (path, got)
        _names_it(got["message"], expected, verify=path == "verify")


# ----------------------------------------------------------------------------------------------- shard files


def test_a_shard_that_links_outside_the_cache_is_refused(clean, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(clean, cache)
    outside = tmp_path / "elsewhere.tar"
    (cache / BAD_SHARD).rename(outside)
    (cache / BAD_SHARD).symlink_to(outside)  # the same bytes: every size and sha256 still agrees
    message = rf"{BAD_SHARD} resolves to {re.escape(str(outside.resolve()))}, outside the cache folder"
    with pytest.raises(CacheError, match=message):
        open_cache(cache)
    problems = verify_cache(cache).problems
    assert len(problems) == 1 and re.search(message, problems[0]), problems
    assert main(["cache", "verify", str(cache), "--no-progress"]) == 1
    with pytest.raises(ValueError, match=message):
        read_through("cpu", cache)


@pytest.mark.parametrize("field", ["index_file", "dali_index"])
def test_a_shard_index_that_links_outside_the_cache_is_refused(clean, tmp_path, field):
    cache = tmp_path / "cache"
    shutil.copytree(clean, cache)
    name = json.loads((cache / "manifest.json").read_text())["shards"][1][field]
    outside = tmp_path / name
    (cache / name).rename(outside)
    (cache / name).symlink_to(outside)
    if field == "index_file":
        with pytest.raises(CacheError, match=rf"{name} resolves to .*, outside the cache folder"):
            open_cache(cache)
    assert any(re.search(rf"{name} resolves to .*, outside the cache folder", p) for p in verify_cache(cache).problems)


def test_links_that_stay_inside_the_cache_are_followed(clean, tmp_path):
    real = tmp_path / "real"
    shutil.copytree(clean, real)
    (real / "store").mkdir()
    (real / BAD_SHARD).rename(real / "store" / BAD_SHARD)
    (real / BAD_SHARD).symlink_to(Path("store") / BAD_SHARD)
    alias = tmp_path / "alias"
    alias.symlink_to(real)  # the cache folder itself may be a link
    assert verify_cache(alias).ok
    assert np.array_equal(open_cache(alias)[BAD]["instance"], open_cache(clean)[BAD]["instance"])


def test_index_entries_cannot_read_outside_the_tar(clean, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(clean, cache)
    forge_sample(cache, BAD)  # re-hashed as is; then the index's image size is made to run past the tar
    manifest = json.loads((cache / "manifest.json").read_text())
    index_path = cache / manifest["shards"][1]["index_file"]
    index = json.loads(index_path.read_text())
    index["samples"][1]["members"][0]["size"] = 2**40
    index_path.write_text(json.dumps(index))
    import hashlib

    manifest["shards"][1]["index_sha256"] = hashlib.sha256(index_path.read_bytes()).hexdigest()
    (cache / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match=rf"sample {BAD_KEY} is malformed \({BAD_KEY}\.jpg: 1099511627776 bytes at offset \d+ do not lie in order inside"):
        open_cache(cache)
    [problem] = [p for p in verify_cache(cache).problems if BAD_KEY in p]
    assert "do not lie inside the" in problem


# ----------------------------------------------------------------------------------------------- the pure checks


def test_checked_label_layouts_give_the_gpu_feed_equal_band_shapes():
    sem = encode_label(np.zeros((100, 300), np.uint8), kind="sem", level=3)
    ins = encode_label(np.ones((100, 300), np.uint16), kind="ins", level=3)
    sem_layout, ins_layout = checked_label_layouts(sem, ins, (100, 300))
    assert sem_layout.band_shape == ins_layout.band_shape == (rows_per_band(300), 300)
    assert sem_layout.padded_height == ins_layout.padded_height
    with pytest.raises(CacheError, match="semantic member is 100 x 300, the sample 100 x 301"):
        checked_label_layouts(sem, ins, (100, 301))
    with pytest.raises(CacheError, match=r"instance member holds uint8, expected uint16 \(dtype code\)"):
        checked_label_layouts(sem, sem, (100, 300))


def test_check_label_bands_finds_a_band_that_comes_out_short():
    array = np.arange(40 * 64, dtype=np.uint16).reshape(40, 64)
    good = encode_label(array, kind="ins", level=0)
    sem_layout, layout = checked_label_layouts(encode_label(array.astype(np.uint8), kind="sem", level=0), good, (40, 64))
    check_label_bands(good, layout, what="instance")
    short = label_member(height=40, width=64, rows=rows_per_band(64), bands=[lz4_band(array.tobytes()[:1000])])
    _, short_layout = checked_label_layouts(encode_label(array.astype(np.uint8), kind="sem", level=0), short, (40, 64))
    with pytest.raises(CacheError, match=r"instance member: band 0 decompresses to 1000 bytes, its 512 rows are 65536"):
        check_label_bands(short, short_layout, what="instance")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nests 100000 levels deep"),
        (b'{"a":"' + b"[" * 100 + b'"}', None),  # brackets inside a string are text
        (b'{"a":"\\"' + b"[" * 100 + b'"}', None),  # after an escaped quote too
        (b'{"a":' + b"[" * 33 + b"]" * 33 + b"}", "nests 34 levels deep"),
        (b'{"a": NaN}', "NaN is not a JSON number"),
        (b'{"a": ' + b"9" * 5000 + b"}", "is not JSON"),
        (b'"' + b"\\" * 9, "is not JSON"),
        (b"\xff", "is not JSON"),
    ],
)
def test_cache_json_is_parsed_within_bounds(data, message):
    if message is None:
        assert isinstance(loads_json(data, what="meta member"), dict)
    else:
        with pytest.raises(CacheError, match=message):
            loads_json(data, what="meta member")


def test_a_meta_member_beyond_its_size_bound_is_refused_unparsed():
    with pytest.raises(CacheError, match=rf"meta member is {MAX_META_BYTES + 1} bytes, more than the {MAX_META_BYTES}"):
        loads_json(b" " * (MAX_META_BYTES + 1), what="meta member", max_bytes=MAX_META_BYTES)
    assert MAX_INSTANCES * 260 < MAX_META_BYTES  # a full instance table (~250 bytes a row) fits


# ----------------------------------------------------------------------------------------------- fuzzing


def test_verify_and_open_cache_survive_random_edits_of_member_headers(clean, tmp_path):
    # bytes of a member's header (or anywhere in the meta) replaced at random and re-hashed: verify always returns
    # its report, and a read either succeeds or raises a CacheError, never anything else
    rng = np.random.default_rng(19)
    cache = tmp_path / "cache"
    shutil.copytree(clean, cache)
    originals = {kind: read_member(cache, BAD, kind) for kind in ("image", "sem", "ins", "meta")}
    outcomes = {"ok": 0, "CacheError": 0}
    for _ in range(80):
        kind = str(rng.choice(list(originals)))
        data = bytearray(originals[kind])
        span = len(data) if kind == "meta" else min(len(data), 64)
        for pos in rng.integers(0, span, size=int(rng.integers(1, 4))):
            data[pos] = int(rng.integers(0, 256))
        forge_sample(cache, BAD, **{**originals, kind: bytes(data)})  # the other members as built
        report = verify_cache(cache)
        assert report.samples == 12 and len(report.problems) <= 1, report.problems
        try:
            open_cache(cache)[BAD]
            outcomes["ok"] += 1
        except CacheError as exc:
            assert f"sample {BAD_KEY}" in str(exc)
            outcomes["CacheError"] += 1
    assert outcomes["CacheError"] > 20, outcomes  # most edits of a header are caught


# ----------------------------------------------------------------------------------------------- the manifest


def test_a_manifest_that_lies_about_its_counts_is_refused_before_anything_is_allocated(clean, tmp_path):
    from cacheforge import run_bounded

    cache = tmp_path / "cache"
    shutil.copytree(clean, cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["shards"][0]["samples"] = 10**12  # the index arrays would take tens of TiB
    manifest["counts"]["samples"] = sum(s["samples"] for s in manifest["shards"])
    (cache / "manifest.json").write_text(json.dumps(manifest))
    setup = f"from fastload.samples import open_cache\nSTEPS = {{'open': lambda: open_cache({str(cache)!r})}}"
    got = run_bounded(setup, memory_gb=0.5, cpu_s=5.0)["open"]
    assert got["error"] == "CacheError", got
    assert re.search(r"shard shard-00000\.tar claims 1000000000000 samples, which take at least \d+ bytes", got["message"])


def test_a_manifest_with_more_classes_than_train_ids_hold_is_refused(clean, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(clean, cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    first = manifest["categories"][0]
    manifest["categories"] = [{**first, "train_id": t, "coco_id": t, "name": f"c{t}"} for t in range(1, 301)]
    manifest["num_classes"] = 301
    (cache / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match=r"300 categories; a cache holds at most 254"):
        open_cache(cache)
