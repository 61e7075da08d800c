"""torchrun with 2 CPU processes (gloo): the union of `index` over ranks is the dataset, once per epoch."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from loader_kit import LOADER_KINDS, make_synth_cache

N_SAMPLES = 17


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_synth_cache(tmp_path_factory.mktemp("ddp"), n=N_SAMPLES)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_torchrun_two_ranks_cover_the_dataset_once_per_epoch(kind, cache, tmp_path):
    out = tmp_path / "gathered.json"
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(worker), str(cache), kind, str(out),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = json.loads(out.read_text())
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    for epoch in range(3):
        union = sorted(i for r in ranks for i in r["epochs"][epoch]["indices"])
        assert union == list(range(N_SAMPLES)), f"epoch {epoch}: samples lost or repeated"
        assert ranks[0]["epochs"][epoch]["steps"] == ranks[1]["epochs"][epoch]["steps"]
    assert ranks[0]["epochs"][0]["indices"] != ranks[0]["epochs"][1]["indices"]
