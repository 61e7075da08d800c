"""Fuzzed COCO annotation files: `load_coco` + `rasterize_image` give correct masks or a named error.

Hypothesis writes COCO documents full of what real files get wrong: degenerate, self-intersecting, huge and
out-of-image polygons, NaN/inf, empty lists, strings/dicts/None/bools where numbers go, Unicode and escaping
file names, duplicate ids, RLE with bad counts (negative, wrong sum, truncated or invalid strings) and bad
sizes, garbage bbox/area/iscrowd, zero, negative, fractional and absurd image sizes. For each document, under
both ``on_error`` policies, loading either raises a named error (`AnnotationError` / `ImageError` /
`ConfigError`) or returns records whose masks hold the invariants of docs/design.md:

- ``instance`` int32 and ``semantic`` uint8 of shape (H, W); ids 1..N contiguous with ``instances``;
- semantic ⊆ {0..K, 255}; a pixel has a train id iff an instance covers it, and it is that instance's;
- an RLE instance equals pycocotools' decoding exactly;
- "fail" that succeeds and "skip" give the same records (nothing was skipped);

and a valid simple polygon agrees with pycocotools' ``annToMask`` (its ``frPyObjects`` rasteriser): every
pixel where they differ has its centre within 0.25 px of the polygon's boundary (pycocotools moves vertices
to a 1/5-px grid and row boundaries by 0.1 px; measured maximum 0.17 px), so the IoU is at least
``1 - 0.5 · perimeter / area``; for polygons whose area is at least 50x their perimeter (a disk of radius 100
and up, like the real fruit polygons) that bound is the IoU >= 0.99 of the real data.

Profiles: the default run draws ``QUICK.max_examples`` documents per test from a fixed seed (derandomised,
so CI is reproducible); ``pytest -m slow`` draws ``LONG.max_examples`` fresh ones per test. Each example
also runs under a SIGALRM time bound, so a hang fails the test instead of stalling it.
"""

from __future__ import annotations

import json
import math
import signal
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from fastload.build.coco import load_coco
from fastload.build.raster import rasterize_image, rasterize_instance
from fastload.errors import AnnotationError, ConfigError, ImageError

NAMED = (AnnotationError, ImageError, ConfigError)
# pycocotools' decode with NumPy 2 (not ours to fix)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
EXAMPLE_TIME_BOUND_S = 20  # a fuzzed example takes milliseconds; only a hang comes near this

QUICK = settings(
    max_examples=150,
    deadline=None,  # wall-clock deadlines are noise on a loaded CI machine; the SIGALRM bound catches hangs
    derandomize=True,
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
LONG = settings(QUICK, max_examples=3000, derandomize=False)


@contextmanager
def time_bound(seconds: int = EXAMPLE_TIME_BOUND_S):
    def expired(signum, frame):
        raise TimeoutError(f"example still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------------------------------- strategies

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(-3, 3), max_size=2),
    st.lists(st.integers(-3, 3), max_size=3),
    st.floats(allow_nan=True, allow_infinity=True),
)
WILD_NUMBERS = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e300, -1e300, 1e15, -0.0, 2**63, 5e8, -3e8])
ODD_SIZES = st.sampled_from([0, -1, -32, 1e9, 10**12, 2**40, 1e308, 32.5, float("nan"), float("inf"), 1 << 21])
FILE_NAMES = st.one_of(
    st.text(min_size=1, max_size=12),  # any Unicode
    st.sampled_from(["a.jpg", "sub/ü ñ.png", "../up.jpg", "/abs.jpg", "C:x.jpg", "a/../../b.jpg", "", ".", "x\x00y"]),
)


class Junk:
    """A document's junk rate (percent): how often a value is replaced by one of the wrong kind.

    Drawn per document (0 for a third of them), so the fuzz sees clean files that reach the rasteriser as
    well as files where almost everything is broken.
    """

    def __init__(self, draw, percent: int) -> None:
        self.draw, self.percent = draw, percent

    def __bool__(self) -> bool:
        return self.percent > 0 and self.draw(st.integers(0, 99)) < self.percent

    def pick(self, strategy, wrong=JUNK):
        return self.draw(wrong) if self else self.draw(strategy)


def size(junk: Junk):
    """Image height or width: mostly small (fast to rasterise), else zero, negative, fractional or absurd."""
    if junk:
        return junk.draw(st.one_of(ODD_SIZES, JUNK, st.integers(1, 40).map(float)))
    return junk.draw(st.integers(1, 40))


def polygon_part(junk: Junk, width, height):
    draw = junk.draw
    shape = draw(st.integers(0, 11))
    if shape == 0:  # degenerate: one point repeated, or collinear points
        x, y = draw(st.floats(0, 30)), draw(st.floats(0, 30))
        pts = [(x, y)] * draw(st.integers(1, 5)) if draw(st.booleans()) else [(x + k, y + 2 * k) for k in range(4)]
        return [v for p in pts for v in p]
    if shape == 1:  # huge: around the image, far outside on every side
        return [-1e6, -1e6, 1e6, -1e6, 1e6, 1e6, -1e6, 1e6]
    if shape == 2:  # self-intersecting bowtie (repaired into two triangles)
        return [2.0, 2.0, 20.0, 20.0, 20.0, 2.0, 2.0, 20.0]
    if shape == 3:
        return draw(st.lists(st.floats(-5, 50), max_size=5))  # too few points or an odd count
    limit = max(width, height) if type(width) is int and type(height) is int and 0 < width < 100 and 0 < height < 100 else 40
    n = draw(st.integers(3, 10))
    coords = [draw(st.floats(-8, limit + 8)) for _ in range(2 * n)]
    if junk:
        coords[draw(st.integers(0, 2 * n - 1))] = draw(st.one_of(WILD_NUMBERS, JUNK))
    return coords


def valid_rle(draw, height: int, width: int) -> dict:
    mask = np.zeros((height, width), np.uint8, order="F")
    for _ in range(draw(st.integers(0, 3))):
        r, c = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
        mask[r : r + draw(st.integers(1, 8)), c : c + draw(st.integers(1, 8))] = 1
    if draw(st.booleans()):
        return {"size": [height, width], "counts": mask_utils.encode(mask)["counts"].decode("ascii")}
    # uncompressed: run lengths of the column-major pixels, starting with a (possibly empty) run of zeros
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"size": [height, width], "counts": ([0] if flat[0] else []) + runs}


def segmentation(junk: Junk, height, width):
    draw = junk.draw
    if junk:
        return draw(st.one_of(JUNK, st.just([]), st.fixed_dictionaries({"size": JUNK, "counts": JUNK})))
    small = type(height) is int and type(width) is int and 0 < height <= 64 and 0 < width <= 64
    if small and draw(st.integers(0, 3)) == 0:
        rle = valid_rle(draw, height, width)
        if junk:
            bad = draw(st.integers(0, 3))
            if bad == 0:
                rle["size"] = draw(st.one_of(JUNK, st.lists(st.integers(-2, 70), max_size=3)))
            elif bad == 1 and isinstance(rle["counts"], list):
                rle["counts"] = [*rle["counts"], draw(st.integers(-5, 5))]  # wrong sum, or negative
            elif bad == 2:
                rle["counts"] = draw(st.text(max_size=10))  # garbage string
            elif isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"][: len(rle["counts"]) // 2]  # cut short
        return rle
    return [polygon_part(junk, width, height) for _ in range(draw(st.integers(1, 3)))]


@st.composite
def coco_documents(draw):
    junk = Junk(draw, draw(st.sampled_from([0, 0, 2, 5, 15, 40])))
    categories = [
        {"id": junk.pick(st.just(k + 1), st.one_of(JUNK, st.integers(0, 3))),
         "name": junk.pick(st.sampled_from(["cup", "ü", "bowl"]), st.one_of(JUNK, st.just("_background_")))}
        for k in range(draw(st.integers(1 if not junk.percent else 0, 3)))
    ]  # fmt: skip
    images = [
        {"id": junk.pick(st.just(k + 1), st.one_of(JUNK, st.integers(1, 3))), "file_name": junk.pick(st.just(f"{k}.jpg"), FILE_NAMES),
         "height": size(junk), "width": size(junk)}
        for k in range(draw(st.integers(1 if not junk.percent else 0, 3)))
    ]  # fmt: skip
    image_ids = [img["id"] for img in images] or [1]
    category_ids = [c["id"] for c in categories] or [1]
    annotations = []
    for k in range(draw(st.integers(0, 6))):
        image = draw(st.sampled_from(images)) if images else {"id": 1, "height": 8, "width": 8}
        annotation = {
            "id": junk.pick(st.just(k + 1), st.one_of(JUNK, st.integers(1, 3))),
            "image_id": junk.pick(st.just(image["id"]), st.one_of(JUNK, st.sampled_from(image_ids))),
            "category_id": junk.pick(st.sampled_from(category_ids)),
            "iscrowd": junk.pick(st.sampled_from([0, 0, 0, 1]), st.one_of(JUNK, st.just(2))),
            "area": junk.pick(st.floats(0, 1e4)),
            "bbox": draw(st.one_of(st.lists(st.floats(allow_nan=True), max_size=5), JUNK)),  # unused: any garbage
            "segmentation": segmentation(junk, image["height"], image["width"]),
        }
        if junk:
            del annotation[draw(st.sampled_from(sorted(annotation)))]
        annotations.append(annotation)
    return {"images": images, "categories": categories, "annotations": annotations}


# ----------------------------------------------------------------------------------------------- checks


def _write(document: dict) -> Path:
    fh = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8")
    with fh:
        json.dump(document, fh)  # NaN / Infinity tokens included: Python's json reads them back
    return Path(fh.name)


def _load(path: Path, on_error: str):
    try:
        return load_coco(path, on_error=on_error), None
    except NAMED as exc:
        return None, exc


def check_masks(dataset) -> None:
    num_classes = len(dataset.categories)
    for record in dataset.images:
        raster = rasterize_image(record)
        h, w = record.height, record.width
        assert raster.instance.dtype == np.int32 and raster.instance.shape == (h, w)
        assert raster.semantic.dtype == np.uint8 and raster.semantic.shape == (h, w)
        ids = np.unique(raster.instance)
        n = len(raster.instances)
        assert ids.tolist() == list(range(0 if (raster.instance == 0).any() else 1, n + 1)), (ids, n)
        labels = set(np.unique(raster.semantic).tolist())
        assert labels <= set(range(num_classes + 1)) | {255}, labels
        thing = (raster.semantic != 0) & (raster.semantic != 255)
        assert np.array_equal(thing, raster.instance > 0)
        if n:
            train_ids = np.array([0] + [inst.train_id for inst in raster.instances], np.uint8)
            assert np.array_equal(raster.semantic[thing], train_ids[raster.instance[thing]])
        for inst in record.instances:
            if inst.rle is not None:
                mask = rasterize_instance(inst, h, w)
                assert np.array_equal(mask, mask_utils.decode(inst.rle).astype(bool))


def _same_records(a, b) -> bool:
    def key(ds):
        return [
            (r.image_id, r.file_name, r.height, r.width, [(i.annotation_id, i.train_id, i.iscrowd) for i in r.instances])
            for r in ds.images
        ]

    return key(a) == key(b) and a.categories == b.categories


def check_document(document: dict) -> None:
    path = _write(document)
    try:
        with time_bound(), warnings.catch_warnings():
            # shapely warns of overflow when its repair or clipping went wrong (the shape it returns is not
            # the clipped polygon): that must be refused as a bad part before, never reach the masks
            warnings.filterwarnings("error", category=RuntimeWarning, module="shapely")
            strict, error = _load(path, "fail")
            lenient, lenient_error = _load(path, "skip")
            if error is not None:
                assert str(error), "a named error must say what is wrong"
            event(f"fail: {type(error).__name__ if error else 'loaded'}; skip: {type(lenient_error).__name__ if lenient_error else 'loaded'}")
            if lenient_error is None:
                event(f"skip loaded {min(sum(len(r.instances) for r in lenient.images), 3)}+ instances")
            if lenient_error is not None:
                assert error is not None, "skip raised where fail did not"
                return
            assert all(isinstance(s.reason, str) and s.reason for s in lenient.skips)
            if strict is not None:
                assert _same_records(strict, lenient)
                assert all(s.reason == "background category" for s in lenient.skips)
                check_masks(strict)
            check_masks(lenient)
    finally:
        path.unlink()


def _run_document_fuzz(document: dict) -> None:
    try:
        check_document(document)
    except NAMED:
        pytest.fail("load_coco raised outside the checked calls")


@QUICK
@given(document=coco_documents())
def test_fuzzed_coco_loads_to_valid_masks_or_raises_a_named_error(document):
    _run_document_fuzz(document)


@pytest.mark.slow
@LONG
@given(document=coco_documents())
def test_fuzzed_coco_loads_to_valid_masks_or_raises_a_named_error_long(document):
    _run_document_fuzz(document)


def test_a_part_whose_repair_divides_by_zero_is_a_named_bad_part():
    # found by the long fuzz run: vertices like 1e-215 make shapely's make_valid divide by zero (a RuntimeWarning
    # and a shape nobody can trust); the part is refused with the reason, under both policies
    degenerate = [5.00483192742027e-215, 1.0855793606256147e-237, -6.506760801911188e-170, 1.024423864015008e-263]
    document = {
        "images": [{"id": 1, "file_name": "0.jpg", "height": 1, "width": 1}],
        "categories": [{"id": 1, "name": "cup"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 0.0, "bbox": [],
             "segmentation": [degenerate + [0.0, 0.0, 0.0, 1.0, 0.0, -1.0]]}
        ],
    }
    path = _write(document)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning escapes to the user's terminal either
            with pytest.raises(AnnotationError, match="degenerate coordinates"):
                load_coco(path, on_error="fail")
            assert "degenerate coordinates" in load_coco(path, on_error="skip").skips[0].reason
    finally:
        path.unlink()


# ----------------------------------------------------------------------------------------------- vs pycocotools


@st.composite
def simple_polygons(draw):
    """A star-shaped (hence simple) polygon inside an image: small and jagged, or large and round."""
    if draw(st.integers(0, 3)) == 0:  # large and round, like the real fruit polygons: the IoU >= 0.99 case
        height = width = 512
        radius = draw(st.floats(150, 250))
        n, low = draw(st.integers(8, 14)), 0.85
    else:
        height = draw(st.sampled_from([16, 48, 256]))
        width = draw(st.integers(height // 2, height))
        radius = draw(st.floats(1.0, min(height, width) / 2 - 0.01))
        n, low = draw(st.integers(3, 14)), 0.3
    cx = draw(st.floats(radius, width - radius))
    cy = draw(st.floats(radius, height - radius))
    if low > 0.5:  # round: evenly spread angles, jittered
        angles = [(k + draw(st.floats(-0.3, 0.3))) * 2 * math.pi / n for k in range(n)]
    else:
        angles = sorted(draw(st.lists(st.floats(0, 2 * math.pi, exclude_max=True), min_size=n, max_size=n, unique=True)))
    radii = draw(st.lists(st.floats(low * radius, radius), min_size=n, max_size=n))
    points = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii, strict=True)]
    return height, width, points


def check_polygon(height: int, width: int, points: list[tuple[float, float]]) -> None:
    polygon = shapely.Polygon(points)
    if not polygon.is_valid or polygon.area < 1e-6:
        return  # nearly coincident angles can fold the star; the fuzz above covers invalid shapes
    flat = [v for p in points for v in p]
    document = {
        "images": [{"id": 1, "file_name": "x.png", "height": height, "width": width}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [flat]}],
    }
    path = _write(document)
    try:
        with time_bound():
            [record] = load_coco(path).images
            ours = rasterize_image(record).instance > 0
    finally:
        path.unlink()
    reference = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([flat], height, width))).astype(bool)
    differ = np.argwhere(ours != reference)
    if len(differ):
        centres = shapely.points(differ[:, 1] + 0.5, differ[:, 0] + 0.5)
        worst = float(shapely.distance(polygon.exterior, centres).max())
        assert worst <= 0.25, f"a pixel {worst:.3f} px from the boundary differs from pycocotools"
    union = int((ours | reference).sum())
    if union:
        iou = (ours & reference).sum() / union
        assert iou >= 1 - 0.5 * polygon.length / polygon.area, (iou, polygon.length, polygon.area)
        if polygon.area >= 50 * polygon.length and reference.sum() >= 32:
            assert iou >= 0.99, iou


@QUICK
@given(case=simple_polygons())
def test_valid_simple_polygons_agree_with_pycocotools(case):
    check_polygon(*case)


@pytest.mark.slow
@LONG
@given(case=simple_polygons())
def test_valid_simple_polygons_agree_with_pycocotools_long(case):
    check_polygon(*case)


# ----------------------------------------------------------------------------------------------- pinned findings


def _one_annotation(tmp_path: Path, *, height=20, width=20, segmentation=None) -> Path:
    document = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": height, "width": width}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": segmentation or [[1, 1, 9, 1, 9, 9]]}],
    }
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize(("height", "width"), [(10**9, 10**9), (1, 1 << 21), (1 << 16, 1 << 15), (1e308, 2.0)])
def test_absurd_image_sizes_are_refused_by_name(tmp_path, height, width):
    # found by the fuzz: load_coco accepted them and rasterize_image died in NumPy (MemoryError, or a
    # ValueError for the maximum dimension) after trying to allocate exabytes
    path = _one_annotation(tmp_path, height=height, width=width)
    with pytest.raises(AnnotationError, match=r"image 1: height x width .* is beyond what can be decoded"):
        load_coco(path)
    assert load_coco(path, on_error="skip").images == ()


@pytest.mark.parametrize(
    "part",
    [
        pytest.param([1.0, 2.0, [1, 2], 3.0, 4.0, 5.0], id="nested-list"),  # NumPy: bare ValueError, even under skip
        pytest.param([True, 1.0, 5.0, 1.0, 5.0, 5.0], id="bool"),  # was read as 1.0
        pytest.param([0, 0, 10, 0, 10, 10**400], id="int-beyond-float64"),
    ],
)
def test_polygon_coordinates_that_are_not_plain_numbers_are_named(tmp_path, part):
    path = _one_annotation(tmp_path, segmentation=[part])
    with pytest.raises(AnnotationError, match=r"image 1, annotation 1: polygon part 1 must be a flat list of numbers"):
        load_coco(path)
    dataset = load_coco(path, on_error="skip")
    assert dataset.images[0].instances == () and "flat list of numbers" in dataset.skips[0].reason


@pytest.mark.parametrize(
    "part",
    [
        pytest.param([0, 0, 1e300, 0, 0, 10], id="wide-triangle"),  # was clipped to the wrong triangle
        pytest.param([0, 0, 1e300, 1e300, 0, 10], id="diagonal"),
        pytest.param([5, 5, -2e9, 15, 15, 15], id="beyond-1e9"),
    ],
)
def test_coordinates_where_shapely_overflows_are_a_bad_part(tmp_path, part):
    # found by the fuzz: shapely's clipping overflows on coordinates near 1e300 (warning only) and returns
    # a wrong shape, e.g. the triangle (0,0) (1e300,0) (0,10) clipped to 20 x 20 came back as (0,0) (0,10)
    # (20,0), half the true area, and was rasterised as such
    path = _one_annotation(tmp_path, segmentation=[part, [1, 1, 9, 1, 9, 9]])
    with pytest.raises(AnnotationError, match=r"polygon part 1 of 2: coordinate out of range"):
        load_coco(path)
    [record] = load_coco(path, on_error="skip").images
    assert len(record.instances[0].polygons) == 1  # the sane part is kept
    assert np.array_equal(record.instances[0].polygons[0], np.array([[1, 1], [9, 1], [9, 9]], float))
