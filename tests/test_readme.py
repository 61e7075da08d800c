"""The README is executable documentation: its quickstart is CI's script, its Python example runs, and every
`fastload ...` command it shows parses with the real command line."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fastload.tools.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_quickstart_word_for_word():
    quickstart = _code_blocks("bash")[0].strip().splitlines()
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert len(quickstart) == 2, "the quickstart is two commands: install+demo, then the tests"
    for line in quickstart:
        assert line in ci, f"README quickstart line not in .ci/run: {line}"


def test_every_documented_fastload_command_parses():
    parser = build_parser()
    commands = []
    for block in _code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            for part in re.split(r"&&|;", line):
                words = shlex.split(part)
                if words and words[0] == "fastload":
                    commands.append(words[1:])
    assert len(commands) >= 8, "the README documents the CLI"
    for words in commands:
        try:
            parser.parse_args(words)
        except SystemExit as exc:  # argparse exits on an unknown flag or a missing argument
            pytest.fail(f"README command does not parse: fastload {' '.join(words)} (exit {exc.code})")


def _python_example(marker: str) -> str:
    (example,) = [b for b in _code_blocks("python") if marker in b]
    return example


def _run_example(example: str, folder: Path) -> subprocess.CompletedProcess:
    """Run a README example as a user would: a script in an empty folder, nothing of the checkout beside it."""
    script = folder / "example.py"
    script.write_text(example, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, str(script)], cwd=folder, capture_output=True, text=True, timeout=600, env=env
    )


def test_python_example_runs(tmp_path):
    # no configs/ beside it: augment="default" is the config installed with fastload
    result = _run_example(_python_example("segnet_loss(pred, batch)"), tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


def test_the_panoptic_deeplab_loss_example_runs_on_a_batch(sample_cache):
    # the README's loss lines, on a real batch and a model's predictions at the maps' size
    import torch

    from fastload import CpuLoader

    with CpuLoader(sample_cache, 2, size=(64, 64), augment="default", num_threads=0) as loader:
        batch = next(iter(loader))
    g = torch.Generator().manual_seed(0)
    out = {
        "semantic": torch.randn(2, loader.num_classes, 64, 64, generator=g).requires_grad_(),
        "center": torch.rand(2, 1, 64, 64, generator=g).requires_grad_(),
        "offset": torch.randn(2, 2, 64, 64, generator=g).requires_grad_(),
    }
    scope = {"out": out, "batch": batch}
    exec(_python_example("Panoptic-DeepLab's loss weights"), scope)  # noqa: S102 - our own README
    loss = scope["loss"]
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in out.values())
    # the centre term counts only where the weight is 1: moving the prediction elsewhere changes nothing
    ignored = batch["center_weight"] == 0
    assert ignored.any()
    before = scope["center"].item()
    out["center"].data[ignored] += 5.0
    exec(_python_example("Panoptic-DeepLab's loss weights"), scope)  # noqa: S102
    assert scope["center"].item() == pytest.approx(before)


def _torchvision_problem() -> str | None:
    """Why torchvision cannot run here (its import error's last line), or None when it imports."""
    probe = subprocess.run(
        [sys.executable, "-c", "import torchvision.models.segmentation"], capture_output=True, text=True, timeout=300
    )
    if probe.returncode == 0:
        return None
    lines = (probe.stderr or probe.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit code {probe.returncode}"


def test_torchvision_example_runs(tmp_path):
    problem = _torchvision_problem()
    if problem is not None:
        import torch

        pytest.skip(
            f"torchvision does not import beside torch {torch.__version__} ({problem}); the README's torchvision "
            "example runs wherever it does (PyPI's torchvision 0.28.0 is a CUDA build, and the CPU build of "
            "torch 2.13.0 cannot load its operators)"
        )
    result = _run_example(_python_example("torchvision.models.segmentation"), tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    epochs = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and "__background__ IoU" in epochs[-1], result.stdout[-2000:]

