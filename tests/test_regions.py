import numpy as np
import pytest

from personseg.regions import METADATA_KEY, RegionFilter, filter_regions, region_scores


def blob(prob: np.ndarray, y: int, x: int, size: int, value: float) -> np.ndarray:
    prob[y:y + size, x:x + size] = value
    return prob


def test_confident_blob_kept_weak_blob_dropped():
    prob = blob(blob(np.zeros((60, 80), np.float32), 5, 5, 20, 0.95), 30, 50, 15, 0.62)
    out = filter_regions(prob, 0.55, RegionFilter(level=0.8))
    np.testing.assert_array_equal(out[5:25, 5:25], np.float32(0.95))
    assert not out[30:45, 50:65].any()
    np.testing.assert_array_equal(out[prob < 0.55], prob[prob < 0.55])  # below the support: untouched


def test_weak_fringe_attached_to_confident_core_kept():
    prob = blob(blob(np.zeros((60, 80), np.float32), 10, 10, 30, 0.6), 20, 20, 6, 0.97)  # core inside a fringe
    np.testing.assert_array_equal(filter_regions(prob, 0.55, RegionFilter(level=0.9)), prob)
    # the same region scored by its mean is mostly fringe: dropped whole
    assert not filter_regions(prob, 0.55, RegionFilter(level=0.9, stat="mean")).any()


def test_image_scope_keeps_weak_regions_beside_a_confident_one_and_drops_them_alone():
    prob = blob(blob(np.zeros((60, 80), np.float32), 5, 5, 20, 0.95), 30, 50, 15, 0.62)
    settings = RegionFilter(level=0.8, scope="image")
    np.testing.assert_array_equal(filter_regions(prob, 0.55, settings), prob)
    prob[5:25, 5:25] = 0
    assert not filter_regions(prob, 0.55, settings).any()


def test_p90_is_not_fooled_by_a_few_high_pixels():
    prob = blob(np.zeros((40, 40), np.float32), 5, 5, 20, 0.6)
    prob[10, 10] = prob[12, 14] = 0.99
    assert filter_regions(prob, 0.5, RegionFilter(level=0.9, stat="peak")).any()
    assert not filter_regions(prob, 0.5, RegionFilter(level=0.9, stat="p90")).any()


def test_min_share_drops_small_regions_and_support_takes_their_halo():
    prob = blob(blob(np.zeros((100, 100), np.float32), 10, 10, 40, 0.99), 70, 70, 6, 0.4)
    prob[72:74, 72:74] = 0.99  # a small confident spot (4 px) inside a 36 px halo at 0.4
    out = filter_regions(prob, 0.5, RegionFilter(min_share=0.01))  # 1% = 100 px
    assert out[10:50, 10:50].all() and not out[72:74, 72:74].any()
    np.testing.assert_array_equal(out[70:76, 70:72], np.float32(0.4))  # the halo is below the support: left
    out = filter_regions(prob, 0.5, RegionFilter(min_share=0.01, support=0.3))
    assert not out[60:, 60:].any() and out[10:50, 10:50].all()


def test_off_filter_and_keep_all_return_the_input():
    prob = np.random.default_rng(0).random((30, 40)).astype(np.float32)
    assert filter_regions(prob, 0.5, RegionFilter()) is prob
    assert filter_regions(prob, 0.5, RegionFilter(level=0.0001)) is prob


def test_region_scores_match_scipy_labelling():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(1)
    prob = np.clip(ndimage.gaussian_filter(rng.random((50, 70)), 2) * 3 - 1, 0, 1).astype(np.float32)
    labels, areas, peaks = region_scores(prob, 0.5, "peak")
    ref, count = ndimage.label(prob >= 0.5, structure=np.ones((3, 3)))
    assert count == len(areas) > 2
    for i in range(1, count + 1):
        values = prob[ref == i]
        j = labels[ref == i][0]
        assert (labels[ref == i] == j).all() and areas[j - 1] == values.size
        assert peaks[j - 1] == values.max()
        assert region_scores(prob, 0.5, "mean")[2][j - 1] == pytest.approx(values.mean(), rel=1e-5)
        assert region_scores(prob, 0.5, "p90")[2][j - 1] == pytest.approx(np.percentile(values, 90))


@pytest.mark.parametrize("kwargs", [{"stat": "max"}, {"scope": "all"}, {"level": 1.5}, {"min_share": -0.1}, {"support": 2}])
def test_bad_settings_are_one_line_errors(kwargs):
    with pytest.raises(ValueError, match="region filter"):
        RegionFilter(**kwargs)


def test_filter_takes_one_probability():
    with pytest.raises(ValueError, match=r"\(h, w\)"):
        filter_regions(np.zeros((1, 10, 10)), 0.5, RegionFilter(level=0.5))


def test_metadata_round_trip_and_bad_metadata():
    settings = RegionFilter(level=0.75, stat="mean", min_share=0.005, scope="image")
    assert RegionFilter.from_metadata(settings.metadata()) == settings
    assert RegionFilter.from_metadata({}) == RegionFilter() and not RegionFilter().active
    for text in ("{", '{"level": 3}', '{"colour": 1}'):
        with pytest.raises(ValueError, match=f"m.onnx: unreadable {METADATA_KEY}"):
            RegionFilter.from_metadata({METADATA_KEY: text}, "m.onnx")
