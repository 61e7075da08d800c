"""Train/val splits of one COCO file, by image id: pure functions, no file access.

``fastload cache build --split val=0.1 --seed 0`` puts each image in a split by a hash of (seed, image id): a
number u in [0, 1) per image, the first split whose running sum of fractions exceeds u, else ``train``. So the
split of an image depends on nothing but its id and the seed: adding images to the COCO file, removing others or
reordering them never moves an image from one split to another, and the same seed gives the same split on every
machine and Python version (sha256, not Python's salted ``hash``). Fractions are met in expectation, not exactly
(a binomial draw per split: 0.1 of 18 images may be 0, 1, 2, 3 ... images; of 10,000 images it is 1,000 ± 30).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence

from fastload.errors import ConfigError

TRAIN = "train"  # the split that takes what the named ones leave
_SPLIT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def parse_split(items: Sequence[str]) -> dict[str, float]:
    """``["val=0.1", "test=0.05"]`` (the ``--split`` values) → ``{"val": 0.1, "test": 0.05}``, checked."""
    fractions: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            fraction = float(value)
        except ValueError:
            fraction = None
        if not sep or fraction is None:
            raise ConfigError(f"--split {item!r}: write NAME=FRACTION, e.g. --split val=0.1")
        if name in fractions:
            raise ConfigError(f"--split: {name!r} is given twice; give each split once")
        fractions[name] = fraction
    return check_split(fractions)


def check_split(fractions: Mapping[str, float]) -> dict[str, float]:
    """Check split names (lowercase, not ``train``) and fractions (each in (0, 1), summing below 1)."""
    if not isinstance(fractions, Mapping) or not fractions:
        raise ConfigError(f"split must map split names to fractions, e.g. {{'val': 0.1}}, got {fractions!r}")
    for name, fraction in fractions.items():
        if not isinstance(name, str) or not _SPLIT_NAME.fullmatch(name) or name == TRAIN:
            raise ConfigError(
                f"split name {name!r}: use lowercase letters, digits, '_' or '-' (e.g. 'val', 'test'), not "
                f"{TRAIN!r}, which takes the images the named splits leave"
            )
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise ConfigError(f"split {name!r}: the fraction must be a number in (0, 1), got {fraction!r}")
    total = sum(fractions.values())
    if total >= 1:
        raise ConfigError(f"split fractions sum to {total:g}; they must leave some images for {TRAIN!r} (sum < 1)")
    return {name: float(fraction) for name, fraction in fractions.items()}


def split_draw(image_id: int, seed: int) -> float:
    """The image's number u in [0, 1): the first 8 bytes of sha256("seed:image_id") over 2**64."""
    digest = hashlib.sha256(f"{int(seed)}:{int(image_id)}".encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(image_id: int, *, seed: int, fractions: Mapping[str, float]) -> str:
    """The split of one image: the first of ``fractions`` (in their order) whose running sum exceeds its draw."""
    u, edge = split_draw(image_id, seed), 0.0
    for name, fraction in fractions.items():
        edge += fraction
        if u < edge:
            return name
    return TRAIN


def split_names(fractions: Mapping[str, float]) -> list[str]:
    """Every split a build writes, ``train`` first."""
    return [TRAIN, *fractions]


def assign(image_ids: Iterable[int], *, seed: int, fractions: Mapping[str, float]) -> dict[str, list[int]]:
    """The positions (in ``image_ids``' order) that go to each split, for every split ``train`` first."""
    out: dict[str, list[int]] = {name: [] for name in split_names(fractions)}
    for position, image_id in enumerate(image_ids):
        out[split_of(image_id, seed=seed, fractions=fractions)].append(position)
    return out
