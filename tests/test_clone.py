"""A clone works alone: nothing tracked in git points at this machine or at folders beside the checkout.

A user's `git clone` has no `../shared`, no `/work/...`, no virtual environment of ours; a tracked symlink or an
absolute path into someone's machine breaks their first command. `.ci/run` proves the whole quickstart in a
copy of the tracked files; these tests name the offending file at once.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# paths that only exist on some machine: the folder beside the checkout, and the usual machine-specific roots
_ESCAPING = re.compile(
    r"(?<![\w.-])(\.\./shared\b|/(?:work|home|root|Users|mnt|scratch|opt|data|srv)/[\w.-]+)"
)


def _git(*args: str) -> str:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout (these tests read what git tracks)")
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout


def _tracked_text_files() -> list[Path]:
    files = []
    for name in _git("ls-files", "-z").split("\0"):
        path = REPO / name
        if not name or not path.is_file():
            continue
        head = path.read_bytes()[:8192]
        if b"\0" not in head:  # text, not an image
            files.append(path)
    return files


def test_no_tracked_symlinks():
    links = [line.split("\t", 1)[1] for line in _git("ls-files", "-s").splitlines() if line.startswith("120000 ")]
    assert not links, f"symlinks are tracked in git (they point at nothing on another machine): {links}"


def test_no_tracked_virtual_environment_or_build_output():
    tracked = _git("ls-files").splitlines()
    bad = [n for n in tracked if n.split("/", 1)[0] in (".venv", "venv", "demo-out", "build", "dist")]
    assert not bad, f"machine-specific folders are tracked: {bad[:5]}"
    ignored = _git("check-ignore", ".venv", "demo-out").split()
    assert set(ignored) == {".venv", "demo-out"}, ".venv and demo-out must stay git-ignored"


def test_no_tracked_file_refers_outside_the_checkout():
    offenders = []
    for path in _tracked_text_files():
        if path == Path(__file__).resolve():
            continue  # the pattern itself
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            match = _ESCAPING.search(line)
            if match:
                offenders.append(f"{path.relative_to(REPO)}:{number}: {match.group(0)}")
    assert not offenders, "tracked files refer to paths outside the checkout:\n" + "\n".join(offenders[:20])


def test_the_pattern_catches_what_it_should():
    assert _ESCAPING.search('DATA = "../shared/data/fruits_nuts_coco"')
    assert _ESCAPING.search("see /work/main/README.md")
    assert not _ESCAPING.search("fastload synth --out /tmp/bench512/data")  # a scratch folder anyone has
    assert not _ESCAPING.search("fastload/data/fruits_nuts_coco/images")  # inside the repository
