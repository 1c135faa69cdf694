"""Dice / HD95 per structure and the NaN rules, against hand-computed values and a naive HD95."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.spatial.distance import cdist

from pimpic.segmentation.metrics import case_metrics, dice, format_table, hd95, summarise


def _cube(shape, lo, hi, value=1):
    a = np.zeros(shape, np.uint8)
    a[tuple(slice(s, e) for s, e in zip(lo, hi, strict=True))] = value
    return a


def _naive_hd95(pred, gt, spacing):
    """Surface voxels (mask minus its 6-connected erosion), all pairwise mm distances."""

    def surface(m):
        return np.argwhere(m & ~ndimage.binary_erosion(m)) * np.asarray(spacing)

    d = cdist(surface(pred), surface(gt))
    return max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))


def test_identical_prediction_scores_dice_one_hd_zero():
    gt = _cube((20, 20, 20), (4, 4, 4), (14, 14, 14), 1)
    gt[8:11, 8:11, 8:11] = 2
    m = case_metrics(gt.copy(), gt, (1.5, 1.5, 1.5))
    for s in ("organ", "tumour", "whole"):
        assert m[f"dice_{s}"] == 1.0
        assert m[f"hd95_{s}"] == 0.0


def test_known_dice_of_shifted_cubes():
    gt = _cube((16, 16, 16), (2, 2, 2), (6, 6, 6))
    pred = _cube((16, 16, 16), (4, 2, 2), (8, 6, 6))  # half the cube overlaps
    assert dice(pred > 0, gt > 0) == pytest.approx(0.5)
    # organ 1 vs whole: same masks here
    m = case_metrics(pred, gt, (1, 1, 1))
    assert m["dice_organ"] == pytest.approx(0.5)
    assert m["dice_whole"] == pytest.approx(0.5)


def test_hd95_single_voxels_anisotropic_spacing():
    pred = _cube((10, 10, 10), (5, 5, 5), (6, 6, 6)).astype(bool)
    gt = _cube((10, 10, 10), (5, 5, 2), (6, 6, 3)).astype(bool)
    assert hd95(pred, gt, (1.0, 1.0, 2.0)) == pytest.approx(6.0)
    assert hd95(pred, gt, (3.0, 3.0, 0.5)) == pytest.approx(1.5)


def test_hd95_matches_naive_reference():
    rng = np.random.default_rng(0)
    gt = ndimage.binary_dilation(rng.random((18, 18, 18)) > 0.97, iterations=2)
    pred = ndimage.binary_dilation(rng.random((18, 18, 18)) > 0.97, iterations=2)
    spacing = (0.8, 1.2, 2.5)
    assert hd95(pred, gt, spacing) == pytest.approx(_naive_hd95(pred, gt, spacing), rel=1e-4)


def test_no_tumour_in_ground_truth_is_nan_and_excluded():
    gt = _cube((12, 12, 12), (2, 2, 2), (8, 8, 8), 1)  # organ only
    pred = gt.copy()
    pred[4:6, 4:6, 4:6] = 2  # a false-positive tumour does not make the tumour Dice 0
    m = case_metrics(pred, gt, (1, 1, 1))
    assert math.isnan(m["dice_tumour"]) and math.isnan(m["hd95_tumour"])
    other = case_metrics(gt.copy(), gt, (1, 1, 1))
    gt2 = gt.copy()
    gt2[3:5, 3:5, 3:5] = 2
    with_tumour = case_metrics(gt2.copy(), gt2, (1, 1, 1))
    rows = [{"case": "a", **m}, {"case": "b", **other}, {"case": "c", **with_tumour}]
    s = summarise(rows, absent="nan")
    assert s["tumour"]["n"] == 1 and s["tumour"]["n_excluded"] == 2
    assert s["tumour"]["dice_mean"] == 1.0
    assert s["organ"]["n"] == 3 and s["organ"]["n_excluded"] == 0
    assert "tumour" in format_table(s)
    # the released rule (the default): an absent tumour scores 0 and stays in the mean
    z = summarise(rows)
    assert z["tumour"]["n"] == 3 and z["tumour"]["n_excluded"] == 2
    assert z["tumour"]["dice_mean"] == pytest.approx(1 / 3)
    assert z["tumour"]["dice_sd"] == pytest.approx(np.std([0.0, 0.0, 1.0]))


def test_missed_structure_is_dice_zero_hd_nan_and_counted():
    gt = _cube((12, 12, 12), (2, 2, 2), (8, 8, 8), 1)
    gt[4:6, 4:6, 4:6] = 2
    pred = np.where(gt == 2, 1, gt).astype(np.uint8)  # tumour predicted as organ
    m = case_metrics(pred, gt, (1, 1, 1))
    assert m["dice_tumour"] == 0.0 and math.isnan(m["hd95_tumour"])
    assert m["dice_whole"] == 1.0
    s = summarise([{"case": "a", **m}])
    assert s["tumour"]["n"] == 1 and s["tumour"]["n_missed"] == 1
    assert s["tumour"]["dice_mean"] == 0.0 and math.isnan(s["tumour"]["hd95_mean"])


def test_summary_mean_and_sd_population_or_sample():
    rows = [{f"{k}_{s}": v for k in ("dice", "hd95") for s in ("organ", "tumour", "whole")}
            for v in (0.2, 0.4, 0.9)]
    s = summarise(rows, ddof=1)["organ"]
    assert s["dice_mean"] == pytest.approx(0.5)
    assert s["dice_sd"] == pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1))
    population = summarise(rows)["organ"]  # the released convention (ddof 0) by default
    assert population["dice_sd"] == pytest.approx(np.std([0.2, 0.4, 0.9], ddof=0))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_dice_symmetric_and_bounded(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.random((6, 6, 6)) > 0.5, rng.random((6, 6, 6)) > 0.5
    b[0, 0, 0] = a[0, 0, 0] = True
    d = dice(a, b)
    assert 0.0 <= d <= 1.0
    assert d == pytest.approx(dice(b, a))


def test_hd95_prints_no_monai_deprecation_noise():
    """MONAI's internal use of its deprecated ``always_return_as_numpy`` is not shown to users."""
    import warnings

    a = _cube((10, 10, 10), (2, 2, 2), (5, 5, 5), 1).astype(bool)
    b = _cube((10, 10, 10), (3, 3, 3), (6, 6, 6), 1).astype(bool)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert hd95(a, b, (1, 1, 1)) > 0
    assert not [w for w in caught if "always_return_as_numpy" in str(w.message)]


# --------------------------------------------------------------- any label set, the metric table


def _named():
    from pimpic.data.labels import parse_labels

    return parse_labels({"background": 0, "brainstem": 1, "spinal cord": 2, "parotid": 3},
                        "dataset.json", by_name=True)


def _three_organs(parotid: bool = True) -> np.ndarray:
    gt = _cube((16, 12, 10), (1, 1, 1), (5, 6, 6), 1)
    gt[6:10, 1:6, 1:6] = 2
    if parotid:
        gt[11:15, 4:10, 2:8] = 3
    return gt


def test_every_named_structure_is_scored_and_an_absent_one_follows_the_rule():
    labels = _named()
    with_parotid, without = _three_organs(), _three_organs(parotid=False)
    pred = with_parotid.copy()
    pred[6:8, 1:6, 1:6] = 0  # half the spinal cord missed
    rows = [{"case": "a", **case_metrics(pred, with_parotid, (1, 1, 1), labels.structures)},
            # a parotid predicted where the ground truth has none: absent, not a false 0 or 1
            {"case": "b", **case_metrics(with_parotid, without, (1, 1, 1), labels.structures)}]
    assert list(rows[0]) == ["case", "dice_brainstem", "hd95_brainstem", "dice_spinal_cord",
                             "hd95_spinal_cord", "dice_parotid", "hd95_parotid"]
    assert rows[0]["dice_brainstem"] == 1.0 and rows[0]["hd95_brainstem"] == 0.0
    assert rows[0]["dice_spinal_cord"] == pytest.approx(2 * 40 / (40 + 80))
    assert math.isnan(rows[1]["dice_parotid"]) and math.isnan(rows[1]["hd95_parotid"])
    zero = summarise(rows, structures=labels.structures)  # the released rule: absent scores 0
    assert list(zero) == ["brainstem", "spinal_cord", "parotid"]
    assert zero["parotid"]["dice_mean"] == 0.5 and zero["parotid"]["n"] == 2
    assert zero["parotid"]["n_excluded"] == 1 and zero["parotid"]["hd95_mean"] == 0.0
    left_out = summarise(rows, absent="nan", structures=labels.structures)
    assert left_out["parotid"]["dice_mean"] == 1.0 and left_out["parotid"]["n"] == 1
    assert left_out["spinal_cord"]["dice_mean"] == pytest.approx((2 / 3 + 1) / 2)
    table = format_table(left_out, {s.key: s.name for s in labels.structures})
    assert table.splitlines()[2].startswith("spinal cord ")


def test_the_organ_tumour_view_scores_what_it_always_did():
    from pimpic.data.labels import KITS19, parse_labels

    msd = parse_labels({"0": "background", "1": "pancreas", "2": "cancer"}, "d", by_name=False)
    gt = _cube((12, 12, 12), (2, 2, 2), (8, 8, 8), 1)
    gt[4:6, 4:6, 4:6] = 2
    pred = np.roll(gt, 1, axis=0)
    default = case_metrics(pred, gt, (1, 1, 1))
    for ls in (msd, KITS19):
        assert case_metrics(pred, gt, (1, 1, 1), ls.structures) == default
    assert default["dice_whole"] == pytest.approx(2 * 180 / 432)


def test_a_metric_is_one_entry_of_the_metric_table(monkeypatch):
    from pimpic.segmentation import metrics

    toy = metrics.Metric(lambda p, g, sp: float(p.sum() - g.sum()) * float(np.prod(sp)),
                         "ΔV (mm³)", (">8.1f", "<6.1f"))
    monkeypatch.setitem(metrics.METRICS, "dvol", toy)
    labels = _named()
    gt = _three_organs()
    pred = np.where(gt == 3, 0, gt).astype(np.uint8)
    m = case_metrics(pred, gt, (1, 1, 2), labels.structures)
    assert m["dvol_parotid"] == -(4 * 6 * 6) * 2 and m["dvol_brainstem"] == 0.0
    assert "dvol_parotid" in metrics.columns(labels.structures)
    s = summarise([{"case": "a", **m}], structures=labels.structures)
    assert s["parotid"]["dvol_mean"] == -288.0
    assert "ΔV (mm³)" in format_table(s)
