"""Mask maths against small NumPy references on random tensors."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

from keras_condensa import masks

SETTINGS = settings(max_examples=25, deadline=None)


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _weights(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _reference_topk(values, k):
    flat = np.abs(values).ravel()
    keep = np.zeros(flat.size, dtype=bool)
    keep[np.argsort(-flat, kind="stable")[:k]] = True
    return keep.reshape(values.shape)


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    shape=st.sampled_from([(7,), (5, 9), (3, 3, 4, 6)]),
    density=st.floats(0.01, 1.0),
)
def test_magnitude_mask_keeps_exactly_the_largest(seed, shape, density):
    w = _weights(seed, shape)
    mask = _np(masks.magnitude_mask(ops.convert_to_tensor(w), density))
    k = masks.keep_count(density, w.size)
    assert mask.sum() == k
    np.testing.assert_array_equal(mask.astype(bool), _reference_topk(w, k))


@SETTINGS
@given(seed=st.integers(0, 10_000), density=st.floats(0.02, 1.0))
def test_global_counts_follow_one_threshold(seed, density):
    ws = [_weights(seed + i, n) for i, n in enumerate((40, 300, 12))]
    counts = masks.global_keep_counts([ops.convert_to_tensor(np.abs(w)) for w in ws], density)
    k = masks.keep_count(density, sum(w.size for w in ws))
    expected = _reference_topk(np.concatenate(ws), k)
    bounds = np.cumsum([0] + [w.size for w in ws])
    reference = [int(expected[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    # Every layer keeps at least one item; otherwise the split is the global top-k.
    if min(reference) >= 1:
        assert counts == reference
    assert sum(counts) >= k and all(c >= 1 for c in counts)


def test_global_counts_honour_the_layer_floor():
    big = np.full(1000, 5.0, dtype="float32")
    small = np.full(50, 0.1, dtype="float32")
    counts = masks.global_keep_counts(
        [ops.convert_to_tensor(big), ops.convert_to_tensor(small)], 0.2, 0.1
    )
    assert counts[1] == 5  # 10% of the small layer survives despite its low scores
    assert sum(counts) == masks.keep_count(0.2, 1050)


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    density=st.floats(0.05, 1.0),
    align=st.sampled_from([None, 4, 8]),
    criterion=st.sampled_from(["l1", "l2"]),
)
def test_channel_mask_zeroes_whole_filters(seed, density, align, criterion):
    w = _weights(seed, (3, 3, 5, 24))
    scores = masks.channel_scores(ops.convert_to_tensor(w), (-1,), criterion)
    rows = w.reshape(-1, 24)
    ref = np.abs(rows).mean(0) if criterion == "l1" else np.sqrt((rows**2).mean(0))
    np.testing.assert_allclose(_np(scores), ref, rtol=1e-5)
    k = masks.keep_count(density, 24, align)
    if align:
        assert k % align == 0 or k == 24
    keep = masks.topk_mask(scores, k)
    mask = _np(masks.expand_channel_mask(keep, ops.convert_to_tensor(w), (-1,)))
    per_filter = mask.reshape(-1, 24)
    assert set(np.unique(per_filter.sum(0))) <= {0.0, float(rows.shape[0])}
    np.testing.assert_array_equal(per_filter[0].astype(bool), _reference_topk(ref, k))


def test_depthwise_channels_flatten_in_order():
    w = _weights(1, (3, 3, 4, 2))
    scores = _np(masks.channel_scores(ops.convert_to_tensor(w), (-2, -1), "l1"))
    np.testing.assert_allclose(scores, np.abs(w).reshape(9, 8).mean(0), rtol=1e-5)
    keep = np.zeros(8, "float32")
    keep[[1, 6]] = 1
    mask = _np(
        masks.expand_channel_mask(ops.convert_to_tensor(keep), ops.convert_to_tensor(w), (-2, -1))
    )
    np.testing.assert_array_equal(mask.reshape(9, 8).max(0), keep)


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    rows=st.sampled_from([3, 8, 13]),
    cols=st.sampled_from([4, 9, 20]),
    density=st.floats(0.05, 1.0),
)
def test_block_mask_keeps_whole_tiles(seed, rows, cols, density):
    w = _weights(seed, (rows, cols))
    r, c = 2, 4
    grid = _np(masks.block_scores(ops.convert_to_tensor(w), (r, c)))
    br, bc = math.ceil(rows / r), math.ceil(cols / c)
    ref = np.array(
        [
            [np.abs(w[i * r : (i + 1) * r, j * c : (j + 1) * c]).mean() for j in range(bc)]
            for i in range(br)
        ]
    )
    np.testing.assert_allclose(grid, ref, rtol=1e-5)
    k = masks.keep_count(density, br * bc)
    keep = masks.topk_mask(ops.convert_to_tensor(grid), k)
    mask = _np(masks.expand_block_mask(keep, ops.convert_to_tensor(w), (r, c)))
    for i in range(br):
        for j in range(bc):
            tile = mask[i * r : (i + 1) * r, j * c : (j + 1) * c]
            assert tile.min() == tile.max()
    assert int(_np(keep).sum()) == k


@SETTINGS
@given(seed=st.integers(0, 10_000), nm=st.sampled_from([(2, 4), (1, 4), (4, 8), (3, 4)]))
def test_nm_mask_is_exactly_n_of_every_m(seed, nm):
    n, m = nm
    w = _weights(seed, (3, 3, 16, 5))  # groups run along the input channels (axis -2)
    mask = _np(masks.nm_mask(ops.convert_to_tensor(w), n, m, -2))
    groups_w = np.moveaxis(np.abs(w), -2, -1).reshape(-1, m)
    groups_m = np.moveaxis(mask, -2, -1).reshape(-1, m)
    assert (groups_m.sum(1) == n).all()
    for gw, gm in zip(groups_w, groups_m, strict=True):
        np.testing.assert_array_equal(gm.astype(bool), _reference_topk(gw, n))
