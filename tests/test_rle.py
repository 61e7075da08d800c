"""COCO's compressed RLE counts string: fastload's one decoder against pycocotools and a per-character reading."""

from __future__ import annotations

import re

import numpy as np
import pytest
from cocofactory import disk, uncompressed_rle
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from fastload.build.rle import MAX_NUMBER_CHARACTERS, RleError, decode_counts, rle_patch, toggles, xor_rles

# pycocotools' decode trips NumPy 2's __array__(copy=...) deprecation; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def read_counts_string(text: str) -> list[int]:
    """pycocotools' ``rleFrString`` in Python, one character at a time, with exact (unbounded) integers."""
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise RleError("RLE counts string ends in the middle of a number")
            code = ord(text[pos]) - 48
            if not 0 <= code < 64:
                raise RleError(f"RLE counts string has an invalid character {text[pos]!r}")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            pos += 1
            shift += 5
            if not more and code & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def outcome(decode, text: str):
    try:
        return [int(v) for v in decode(text)]
    except RleError as exc:
        return str(exc)


def masks() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [
        disk(40, 60, 20, 30, 12),
        ~disk(40, 60, 20, 30, 12),  # starts with a 1-run: the first 0-run is empty
        rng.random((37, 23)) < 0.5,  # many short runs, differences of both signs
        np.ones((9, 7), dtype=bool),
        np.zeros((9, 7), dtype=bool),
        np.pad(np.ones((1000, 1), dtype=bool), ((3000, 0), (5, 0))),  # long runs: several characters a number
    ]


@pytest.mark.parametrize("mask", masks(), ids=lambda m: f"{m.shape}")
def test_decode_counts_of_pycocotools_strings_are_its_run_lengths(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    runs = decode_counts(rle["counts"])
    assert runs.dtype == np.int64
    assert runs.tolist() == uncompressed_rle(mask)["counts"] or runs.tolist() == [0, *uncompressed_rle(mask)["counts"]]
    assert runs.sum() == mask.size
    assert decode_counts(rle["counts"].decode("ascii")).tolist() == runs.tolist()  # str and bytes alike
    # the toggles are where the column-major pixels flip, 0-runs first
    bounds = [0, *toggles(rle["counts"]).tolist(), mask.size]
    flat = np.concatenate([np.full(b - a, k % 2 == 1) for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))])
    np.testing.assert_array_equal(flat, mask.ravel(order="F"))


@pytest.mark.parametrize("mask", masks()[:4], ids=lambda m: f"{m.shape}")
def test_rle_patch_is_pycocotools_decode_over_the_box(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    full = np.zeros(mask.shape, dtype=bool)
    row0, col0, patch = rle_patch(rle)
    full[row0 : row0 + patch.shape[0], col0 : col0 + patch.shape[1]] = patch
    np.testing.assert_array_equal(full, mask_utils.decode(rle).astype(bool))
    assert patch[0].any() and patch[-1].any() and patch[:, 0].any() and patch[:, -1].any()  # the box is tight


def test_rle_patch_of_an_empty_mask_is_none():
    assert rle_patch(mask_utils.encode(np.zeros((5, 4), dtype=np.uint8, order="F"))) is None


def test_xor_rles_is_even_odd():
    a, b = disk(30, 30, 15, 15, 10), disk(30, 30, 15, 20, 6)
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in (a, b)]
    np.testing.assert_array_equal(mask_utils.decode(xor_rles(rles, 30, 30)).astype(bool), a ^ b)
    assert xor_rles(rles[:1], 30, 30) is rles[0]


ALPHABET = [chr(48 + code) for code in range(64)]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(ALPHABET + ["/", "p", " ", "é"]), max_size=40).map("".join))
def test_decode_counts_reads_every_string_as_pycocotools_does(text):
    # numbers of more than 7 characters are refused: pycocotools never writes one (its counts are 32-bit)
    expected = outcome(read_counts_string, text)
    got = outcome(decode_counts, text)
    if isinstance(got, str) and "more than" in got:
        assert not isinstance(expected, str)  # a string pycocotools reads, with a number it never writes:
        assert re.search(f"[P-o]{{{MAX_NUMBER_CHARACTERS},}}", text)  # 7 characters that say "more follows"
    else:
        assert got == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 1", "invalid character ' '"),
        ("0é1", "invalid character 'é'"),
        ("P", "ends in the middle of a number"),
        ("1" + "P" * MAX_NUMBER_CHARACTERS + "0", f"more than {MAX_NUMBER_CHARACTERS} characters"),
    ],
)
def test_bad_strings_name_the_problem(text, message):
    with pytest.raises(RleError, match=message):
        decode_counts(text)


def test_seven_characters_hold_any_32_bit_count():
    # the largest count pycocotools stores, and its difference to a 0 two runs before: 7 characters each
    runs = [5, 2**32 - 1, 0, 0, 2**32 - 1]
    rle = mask_utils.frPyObjects({"size": [1, sum(runs)], "counts": runs}, 1, sum(runs))
    assert decode_counts(rle["counts"]).tolist() == runs
    assert decode_counts("").tolist() == []
