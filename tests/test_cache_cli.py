"""`fastload cache build | merge | verify | info` and `fastload synth` through `fastload.tools.cli.main`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fastload.cache.manifest import load_manifest
from fastload.cache.verify import verify_cache
from fastload.tools.cli import main


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.fixture
def cache_copy(synth_cache: Path, tmp_path: Path) -> Path:
    out = tmp_path / "cache"
    shutil.copytree(synth_cache, out)
    return out


def test_build_verify_info_from_the_command_line(synth_root, synth_cache, tmp_path, capsys):
    config = tmp_path / "cache.yaml"
    config.write_text("samples_per_shard: 8\n")
    out = tmp_path / "cache"
    args = ["--coco", str(synth_root / "annotations.json"), "--images", str(synth_root / "images"), "--out", str(out)]
    assert main(["cache", "build", *args, "--config", str(config), "--workers", "2", "--no-progress"]) == 0
    assert load_manifest(out).shards == load_manifest(synth_cache).shards
    assert main(["cache", "verify", str(out), "--no-progress"]) == 0
    assert "OK (3 shards, 24 samples)" in capsys.readouterr().out
    assert main(["cache", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "samples 24" in info and "shards 3" in info
    assert "green_blob" in info and "coco_id" in info and "per sample" in info
    for kind in ("image", "sem", "ins", "meta"):
        assert f"  {kind} " in info


def test_verify_clean_cache(synth_cache):
    report = verify_cache(synth_cache)
    assert report.ok and (report.shards, report.samples) == (3, 24)


def test_verify_names_the_shard_and_sample_of_a_flipped_byte(cache_copy, capsys):
    index = json.loads((cache_copy / "shard-00001.json").read_text())
    member = index["samples"][3]["members"][1]  # sample 00000011's semantic mask
    _flip(cache_copy / "shard-00001.tar", member["offset"] + 10)
    assert main(["cache", "verify", str(cache_copy), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "shard-00001.tar: sha256 differs" in err
    assert "shard-00001.tar sample 00000011: member 00000011.sem.lz4: CRC-32 mismatch" in err
    assert "shard-00000" not in err and "shard-00002" not in err


def test_verify_catches_a_damaged_tar_header_and_dali_index(cache_copy):
    index = json.loads((cache_copy / "shard-00002.json").read_text())
    _flip(cache_copy / "shard-00002.tar", index["samples"][0]["members"][2]["offset"] - 512 + 1)  # a header's name
    (cache_copy / "shard-00000.idx").write_text("v1.2 0\n")
    problems = "\n".join(verify_cache(cache_copy).problems)
    assert "shard-00002.tar sample 00000016: member 00000016.ins.lz4: its tar header is corrupt" in problems
    assert "shard-00000.idx: does not match shard-00000.json" in problems


def test_verify_reports_a_missing_shard(cache_copy):
    (cache_copy / "shard-00000.tar").unlink()
    report = verify_cache(cache_copy)
    assert not report.ok and report.problems[0] == "shard-00000.tar: missing"
    assert report.samples == 16


def test_errors_exit_2_with_the_message(tmp_path, synth_root, capsys):
    assert main(["cache", "info", str(tmp_path)]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    (data / "images" / "000004.jpg").write_bytes(b"")
    args = ["--coco", str(data / "annotations.json"), "--images", str(data / "images"), "--no-progress"]
    assert main(["cache", "build", *args, "--out", str(tmp_path / "c1")]) == 2
    assert "image 5 (file '000004.jpg'): file is empty" in capsys.readouterr().err
    assert main(["cache", "build", *args, "--out", str(tmp_path / "c2"), "--on-error", "skip"]) == 0
    assert load_manifest(tmp_path / "c2").samples == 23


def test_node_split_from_torchrun_variables_then_merge(synth_root, synth_cache, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cache"
    args = ["cache", "build", "--coco", str(synth_root / "annotations.json"), "--images", str(synth_root / "images")]
    args += ["--out", str(out), "--no-progress"]
    config = tmp_path / "c.yaml"
    config.write_text("samples_per_shard: 8\n")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert main([*args, "--config", str(config)]) == 0
    assert "fastload cache merge" in capsys.readouterr().out
    assert main(["cache", "merge", str(out)]) == 0
    assert (out / "manifest.json").read_bytes() == (synth_cache / "manifest.json").read_bytes()


def test_synth_command(tmp_path):
    assert main(["synth", "--out", str(tmp_path), "--n", "3", "--size", "40", "56", "--instances", "1", "3", "--seed", "5"]) == 0
    coco = json.loads((tmp_path / "annotations.json").read_text())
    assert [(i["height"], i["width"]) for i in coco["images"]] == [(40, 56)] * 3
    assert all(1 <= sum(a["image_id"] == i["id"] for a in coco["annotations"]) <= 3 for i in coco["images"])
