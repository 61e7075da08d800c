"""Per-sample parameters: deterministic drawing, identity values, and the forward affine's geometry."""

from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import pytest

from fastload.augment.config import AugmentConfig, GeometryConfig, PhotometricConfig, RandomRange
from fastload.augment.params import (
    ParamsBatch,
    SampleParams,
    affine_matrices,
    affine_matrix,
    draw_batch,
    draw_params,
    identity_params,
    map_hw,
    sample_uniforms,
    shadow_band,
)
from fastload.errors import ConfigError


def _apply(m: np.ndarray, xy) -> np.ndarray:
    xy = np.asarray(xy, dtype=np.float64)
    return xy @ m[:, :2].T + m[:, 2]


def test_same_seed_epoch_index_gives_same_params():
    cfg = AugmentConfig.default()
    a = [draw_params(7, 3, i, cfg) for i in range(50)]
    b = [draw_params(7, 3, i, cfg) for i in range(50)]
    assert a == b
    assert a != [draw_params(7, 4, i, cfg) for i in range(50)]  # another epoch differs


def test_params_pickle_round_trip():
    p = draw_params(0, 0, 5, AugmentConfig.default())
    assert pickle.loads(pickle.dumps(p)) == p


def test_no_augmentation_draws_identity():
    cfg = AugmentConfig.none()
    assert all(draw_params(1, 0, i, cfg) == identity_params() for i in range(20))


def test_draws_respect_ranges_and_probabilities():
    cfg = AugmentConfig.default()
    ps = [draw_params(0, 0, i, cfg) for i in range(2000)]
    flips = np.mean([p.flip_x for p in ps])
    assert 0.45 < flips < 0.55
    angles = np.array([p.angle for p in ps])
    assert np.all(np.abs(angles) <= 15.0)
    assert 0.25 < np.mean(angles != 0.0) < 0.35
    assert all(0.75 <= p.scale <= 1.25 for p in ps)
    assert all(abs(p.shift[0]) <= 0.1 and abs(p.shift[1]) <= 0.1 for p in ps)
    assert all(p.noise_sigma == 0.0 or 2.0 <= p.noise_sigma <= 8.0 for p in ps)
    assert all(0 <= p.noise_offset[0] < 256 and 0 <= p.noise_offset[1] < 256 for p in ps)
    assert len({p.noise_offset for p in ps if p.noise_sigma}) > 0.95 * sum(1 for p in ps if p.noise_sigma)
    shadows = [p.shadow for p in ps if p.shadow.strength > 0]
    assert 0.15 < len(shadows) / len(ps) < 0.25
    assert all(math.isclose(math.hypot(s[0], s[1]), 1.0) for s in shadows)


def test_switching_one_augmentation_leaves_the_others_alone():
    base = AugmentConfig.default()
    no_hue = base.replace(photometric=dataclasses.replace(base.photometric, hue=RandomRange(0.0, (0.0, 0.0))))
    for i in range(20):
        a, b = draw_params(0, 0, i, base), draw_params(0, 0, i, no_hue)
        assert dataclasses.replace(a, hue=0.0) == b


def test_identity_affine_is_plain_resize_to_fit():
    m = affine_matrix(identity_params(), (600, 800), (256, 256), fit="contain")
    np.testing.assert_allclose(m, [[0.32, 0, 0], [0, 0.32, 32]])
    m = affine_matrix(identity_params(), (64, 64), (64, 64))
    np.testing.assert_array_equal(m, [[1, 0, 0], [0, 1, 0]])


@pytest.mark.parametrize("fit", ["contain", "cover"])
def test_fit_keeps_aspect_and_centres(fit):
    m = affine_matrix(identity_params(), (300, 500), (200, 200), fit=fit)
    assert m[0, 0] == m[1, 1] and m[0, 1] == m[1, 0] == 0
    corners = _apply(m, [[0, 0], [500, 300]])
    centre = corners.mean(axis=0)
    np.testing.assert_allclose(centre, [100, 100])
    w, h = corners[1] - corners[0]
    if fit == "contain":
        assert math.isclose(w, 200) and h <= 200
    else:
        assert math.isclose(h, 200) and w >= 200


def test_flip_rotation_scale_act_about_the_output_centre():
    src, out = (64, 64), (64, 64)
    centre = [32.0, 32.0]
    for p in [
        SampleParams(flip_x=True),
        SampleParams(flip_y=True),
        SampleParams(angle=33.0),
        SampleParams(scale=1.7),
    ]:
        np.testing.assert_allclose(_apply(affine_matrix(p, src, out), centre), centre, atol=1e-12)
    flip = affine_matrix(SampleParams(flip_x=True), src, out)
    np.testing.assert_array_equal(_apply(flip, [[0.0, 5.0], [10.5, 7.0]]), [[64.0, 5.0], [53.5, 7.0]])


def test_rotation_is_counter_clockwise_on_screen():
    m = affine_matrix(SampleParams(angle=90.0), (64, 64), (64, 64))
    # a point right of the centre goes above it (smaller y) under a CCW quarter turn, exactly
    np.testing.assert_array_equal(_apply(m, [42.0, 32.0]), [32.0, 22.0])


def test_shift_is_a_fraction_of_the_output_size():
    m = affine_matrix(SampleParams(shift=(0.25, -0.5)), (100, 200), (100, 200))
    np.testing.assert_allclose(_apply(m, [0.0, 0.0]), [-100.0, 25.0])


def test_map_size():
    assert map_hw((64, 96), 4) == (16, 24)
    with pytest.raises(ConfigError, match="not divisible by stride 5"):
        map_hw((64, 96), 5)


def test_shadow_band_in_pixels():
    p = SampleParams(shadow=(1.0, 0.0, 0.1, 0.05, 0.4))
    nx, ny, c, hw, strength = shadow_band(p, (300, 400))
    assert (nx, ny, strength) == (1.0, 0.0, 0.4)
    assert math.isclose(c, 200 + 0.1 * 500) and math.isclose(hw, 25.0)


def test_disabled_photometric_is_identity_even_with_geometry():
    cfg = AugmentConfig(geometry=GeometryConfig(flip_x=1.0), photometric=PhotometricConfig())
    p = draw_params(0, 0, 0, cfg)
    assert p == SampleParams(flip_x=True)


def test_a_sample_draws_the_same_numbers_in_any_batch():
    # the feed draws whole batches at once; a sample's parameters must not depend on its batch or position
    cfg = AugmentConfig.default()
    indices = np.array([40, 3, 17, 3, 999_999, 0])
    batch = draw_batch(7, 2, indices, cfg)
    assert [batch.sample(k) for k in range(len(indices))] == [draw_params(7, 2, int(i), cfg) for i in indices]
    again = draw_batch(7, 2, indices[::-1], cfg)
    assert again.samples()[::-1] == batch.samples()
    assert ParamsBatch.of(batch.samples()).samples() == batch.samples()  # the round trip is exact


def test_batch_affines_equal_the_one_sample_affine_bit_for_bit():
    cfg = AugmentConfig.default()
    indices = np.arange(64)
    batch = draw_batch(0, 0, indices, cfg)
    src = np.stack([300 + indices % 7 * 50, 400 + indices % 5 * 30], axis=1)
    matrices = affine_matrices(batch, src, (96, 128), fit="contain")
    for k in range(len(indices)):
        one = affine_matrix(batch.sample(k), tuple(src[k]), (96, 128), fit="contain")
        assert np.array_equal(matrices[k], one), k


def test_uniforms_are_uniform_and_independent_across_slots_indices_and_epochs():
    u = sample_uniforms(3, 0, np.arange(20_000), 25)
    assert u.shape == (20_000, 25) and u.min() >= 0.0 and u.max() < 1.0
    np.testing.assert_allclose(u.mean(axis=0), 0.5, atol=0.01)
    np.testing.assert_allclose(u.var(axis=0), 1 / 12, atol=0.003)
    corr = np.corrcoef(u.T)
    assert np.abs(corr[~np.eye(25, dtype=bool)]).max() < 0.03  # slots are uncorrelated
    next_index = np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]
    other_epoch = np.corrcoef(u[:, 0], sample_uniforms(3, 1, np.arange(20_000), 1)[:, 0])[0, 1]
    other_seed = np.corrcoef(u[:, 0], sample_uniforms(4, 0, np.arange(20_000), 1)[:, 0])[0, 1]
    assert max(abs(next_index), abs(other_epoch), abs(other_seed)) < 0.03
    assert np.array_equal(sample_uniforms(3, 0, np.array([5, 9]), 25), u[[5, 9]])
