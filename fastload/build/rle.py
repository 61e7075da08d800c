"""COCO's run-length encoding (RLE): an annotation's RLE checked, the compressed ``counts`` string decoded, masks
read from it over their bounding box.

An RLE of size (H, W) lists run lengths in column-major order, 0-runs first; its *toggles* are the prefix sums:
the column-major pixel indices ``x·H + y`` where the mask flips. Compressed, ``counts`` is a string (pycocotools'
``rleToString``): each run length as 5-bit little-endian groups, 48 added to each character; bit 0x20 says
another group follows, bit 0x10 of the last group is the sign; from the fourth run on, each is stored as its
difference to the run two before.

`decode_counts` is fastload's one reader of that string: `check_rle` checks an annotation's string with it (at
load, `fastload.build.coco`), and the rasteriser reads the toggles of pycocotools' own strings with it
(`rle_patch`, `xor_rles`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from fastload.cache.manifest import INT64_MAX, INT64_MIN
from fastload.validation import is_int

# pycocotools stores counts as 32-bit unsigned ints and writes each as its difference to the run two before
# (34 bits with the sign): at most 7 characters of 5 bits. A longer number is none it wrote, and its own reader
# shifts a C int past 32 bits on one; refusing it also keeps every value below 2^34, so the run lengths (sums of
# up to half the numbers) stay exact in int64 for any string shorter than MAX_COUNTS_CHARACTERS.
MAX_NUMBER_CHARACTERS = 7
MAX_COUNTS_CHARACTERS = 1 << 29

# (row offset, column offset, bool patch): a mask that is False outside the patch
Patch = tuple[int, int, np.ndarray]


class RleError(ValueError):
    """An RLE that is not one: the message says what is wrong (the caller names the annotation)."""


def decode_counts(counts: bytes | str) -> np.ndarray:
    """The run lengths of a compressed COCO RLE ``counts`` string, exactly.

    Returns
    -------
    int64 (R,)
        Run lengths, 0-runs first, as the string holds them (not checked against a mask size: `check_rle` does).

    Raises
    ------
    RleError
        A character outside the string's alphabet (``0`` .. ``o``), a number cut off at the end, a number of more
        than `MAX_NUMBER_CHARACTERS` characters, or a string of `MAX_COUNTS_CHARACTERS` or more.
    """
    codes = _codes(counts)
    if codes.size == 0:
        return np.zeros(0, dtype=np.int64)
    if (codes & ~0x3F).any():  # below "0" or above "o"
        at = int(np.flatnonzero(codes & ~0x3F)[0])
        char = counts[at] if isinstance(counts, str) else chr(counts[at])
        raise RleError(f"RLE counts string has an invalid character {char!r}")
    if codes.size >= MAX_COUNTS_CHARACTERS:
        raise RleError(f"RLE counts string of {codes.size} characters; at most {MAX_COUNTS_CHARACTERS - 1} are read")
    if codes[-1] & 0x20:
        raise RleError("RLE counts string ends in the middle of a number")
    last = np.flatnonzero(codes < 0x20)  # the last character of each number
    first = np.empty_like(last)
    first[0], first[1:] = 0, last[:-1] + 1
    shift = 5 * (np.arange(codes.size) - np.repeat(first, last - first + 1))
    if shift.max() >= 5 * MAX_NUMBER_CHARACTERS:
        raise RleError(
            f"RLE counts string has a number of more than {MAX_NUMBER_CHARACTERS} characters; pycocotools writes "
            f"at most {MAX_NUMBER_CHARACTERS} (its counts are 32-bit)"
        )
    digits = codes & 0x1F
    digits[last] -= (digits[last] & 0x10) << 1  # the last group is signed
    runs = np.add.reduceat(digits << shift, first)
    runs[1::2] = np.cumsum(runs[1::2])  # undo the differences to the run two before
    runs[2::2] = np.cumsum(runs[2::2])
    return runs


def toggles(counts: bytes | str) -> np.ndarray:
    """Toggle positions (int64, increasing for a valid RLE) of a compressed COCO RLE string: the prefix sums of
    its run lengths, the last run's end (H·W) left out."""
    return np.cumsum(decode_counts(counts)[:-1])


def _codes(counts: bytes | str) -> np.ndarray:
    """Each character's code point − 48, int64."""
    if isinstance(counts, str):
        if not counts.isascii():
            return np.frombuffer(counts.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.int64) - 48
        counts = counts.encode("ascii")
    return np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48


# ------------------------------------------------------------------------------------------ an annotation's RLE


def check_rle(seg: dict, height: int, width: int) -> dict:
    """An annotation's RLE object, checked, as pycocotools makes it: ``{"size": [h, w], "counts": bytes}``.

    ``counts`` may be the compressed string or the uncompressed list of run lengths; either must describe an
    ``height`` x ``width`` mask exactly (pycocotools decodes without bounds checks: counts that overrun H·W would
    write past its buffer) and cover at least one pixel.

    Raises
    ------
    RleError
        Naming what is wrong (the caller names the annotation).
    """
    size = seg.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int64(v) for v in size)):
        raise RleError(f"RLE size must be [height, width], got {size!r}")
    if list(size) != [height, width]:
        raise RleError(f"RLE size {size} does not match the image ({height} x {width})")
    counts = seg.get("counts")
    if isinstance(counts, str):
        _check_counts(decode_counts(counts).tolist(), height, width)
        rle = {"size": [height, width], "counts": counts.encode("ascii")}
    elif isinstance(counts, list):
        if not all(_is_int64(v) for v in counts):
            raise RleError("RLE counts must be integers")
        _check_counts(counts, height, width)
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    else:
        raise RleError(f"RLE counts must be a string or a list of integers, got {type(counts).__name__}")
    if float(mask_utils.area(rle)) <= 0:
        raise RleError("zero area (the RLE mask is empty)")
    return rle


def _is_int64(value: Any) -> bool:
    return is_int(value) and INT64_MIN <= value <= INT64_MAX


def _check_counts(counts: Sequence[int], height: int, width: int) -> None:
    """Python ints: exact whatever the values (a sum of int64 could wrap)."""
    if any(c < 0 for c in counts):
        raise RleError("RLE counts must not be negative")
    if sum(counts) != height * width:
        raise RleError(f"RLE counts sum to {sum(counts)}, expected height*width = {height * width}")


# ------------------------------------------------------------------------------------------------ masks


def rle_patch(rle: dict) -> Patch | None:
    """Decode a compressed RLE over the mask's bounding box only (``mask.decode`` fills the whole image).

    Work is proportional to the number of runs and to the box, not to the image.

    Returns
    -------
    (row0, col0, bool (h, w)) or None when the mask is empty
    """
    col0, row0, cols, rows = (int(v) for v in mask_utils.toBbox(rle))
    if cols == 0:
        return None
    # each run of ones by its first pixel and one past its last, as column-major indices in the box: the
    # run's pixels are in the box, so both indices are exact ("one past" the bottom of a box column is
    # the top of the next one, which is where column-major order goes on)
    pixels = toggles(rle["counts"])
    pixels[1::2] -= 1
    col, row = np.divmod(pixels, int(rle["size"][0]))
    inbox = col * rows + row - (col0 * rows + row0)
    inbox[1::2] += 1
    bounds = np.concatenate(([0], inbox, [rows * cols]))
    values = np.zeros(bounds.size - 1, dtype=bool)
    values[1::2] = True  # 0-runs first
    return row0, col0, np.repeat(values, bounds[1:] - bounds[:-1]).reshape(cols, rows).T


def xor_rles(rles: list[dict], height: int, width: int) -> dict:
    """The even-odd combination of compressed RLEs (a part's rings: exterior, then holes); pycocotools has no XOR."""
    if len(rles) == 1:
        return rles[0]
    # XOR: all the rings' toggles together; two at one pixel cancel
    flips, times = np.unique(np.concatenate([toggles(rle["counts"]) for rle in rles]), return_counts=True)
    bounds = np.concatenate([[0], flips[times % 2 == 1], [height * width]])
    counts = {"size": [height, width], "counts": np.diff(bounds).tolist()}
    return mask_utils.frPyObjects(counts, height, width)
