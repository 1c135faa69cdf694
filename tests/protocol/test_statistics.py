"""The paired tests (statistics.py) against a naive reference: every pairing, the absent rule,
HD95, Holm, the reasons a test is not made, the table and the sentences, and the results an
experiment folder or outside runs give."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from scipy.stats import wilcoxon

from _runs import per_case_csv, write_run_info
from pimpic.data.cache import write_manifest
from pimpic.data.labels import ORGAN_TUMOUR, Structure, parse_labels
from pimpic.errors import PimpicError
from pimpic.paths import CONFIG, MARKER, PER_CASE, RESULTS, RUN_INFO, eval_dir
from pimpic.protocol import results, statistics
from pimpic.protocol.statistics import PairedTest, holm, paired_tests

CASES = [f"c{i}" for i in range(6)]
SEEDS = {"random": (0, 1, 2), "pimpic": (0, 1, 2), "voco": (0, 1)}


def _rows() -> list[dict[str, Any]]:
    """Three methods at 5 and 100 %, VoCo without seed 2; organ Dice all distinct (no ties, no
    zero differences); the tumour absent on c0 (Dice and HD95 NaN); HD95 NaN (a missed
    organ) on one case-run of PiMPiC."""
    rng = np.random.default_rng(3)
    rows = []
    for method, seeds in SEEDS.items():
        for fraction in (5, 100):
            for seed in seeds:
                for i, case in enumerate(CASES):
                    organ = 0.4 + 0.05 * i + rng.uniform(0, 0.1)
                    hd = 10.0 - i + rng.uniform(0, 2)
                    if method == "pimpic" and fraction == 5 and seed == 1 and i == 2:
                        hd = math.nan
                    rows.append({"method": method, "fraction": fraction, "n_train_cases": 3,
                                 "seed": seed, "case": case, "dice_organ": organ,
                                 "dice_tumour": math.nan if i == 0 else rng.uniform(0.2, 0.5),
                                 "dice_whole": organ, "hd95_organ": hd,
                                 "hd95_tumour": math.nan if i == 0 else 5.0 + i,
                                 "hd95_whole": hd})
    return rows


def _naive_scores(rows: list[dict[str, Any]], method: str, fraction: int, structure: str,
                  absent: str, metric: str) -> dict[tuple[str, int], float]:
    out = {}
    for r in rows:
        if r["method"] == method and r["fraction"] == fraction:
            v = r[f"{metric}_{structure}"]
            if metric == "dice" and math.isnan(v) and absent == "zero":
                v = 0.0
            if not math.isnan(v):
                out[r["case"], r["seed"]] = v
    return out


def _naive_pairs(rows: list[dict[str, Any]], method: str, fraction: int, structure: str,
                 pairing: str, absent: str = "zero", metric: str = "dice",
                 reference: str = "random") -> tuple[list[float], list[float]]:
    """The pairs of ``pairing``, by loops over the cases and seeds."""
    a = _naive_scores(rows, method, fraction, structure, absent, metric)
    b = _naive_scores(rows, reference, fraction, structure, absent, metric)
    if pairing == "case-seed":
        keys = [(c, s) for c in CASES for s in range(3) if (c, s) in a and (c, s) in b]
        return [a[k] for k in keys], [b[k] for k in keys]
    mine, theirs = [], []
    for case in CASES:
        sa = [s for s in range(3) if (case, s) in a]
        sb = [s for s in range(3) if (case, s) in b]
        if pairing == "common-seeds":
            sa = sb = [s for s in sa if s in sb]
        if sa and sb:
            mine.append(sum(a[case, s] for s in sa) / len(sa))
            theirs.append(sum(b[case, s] for s in sb) / len(sb))
    return mine, theirs


def _naive_p(d: np.ndarray) -> float:
    """Exact two-sided Wilcoxon signed-rank p-value by enumerating every sign assignment of the
    ranks of |d| (distinct, non-zero differences)."""
    ranks = np.argsort(np.argsort(np.abs(d))) + 1.0
    w = ranks[d > 0].sum()
    centre = len(d) * (len(d) + 1) / 4
    signs = (np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1
    every = signs @ ranks
    return float(np.mean(np.abs(every - centre) >= abs(w - centre) - 1e-9))


@pytest.mark.parametrize("reference", ["random", "voco"])  # VoCo lacks a seed the others have
@pytest.mark.parametrize("pairing", ["case", "common-seeds", "case-seed"])
def test_every_pairing_matches_the_naive_reference(pairing: str, reference: str) -> None:
    rows = _rows()
    tests = paired_tests(rows, reference, pairing=pairing)
    assert len(tests) == 3 * 2 * 2  # structures × fractions × methods but the reference
    assert [t.structure.key for t in tests[::4]] == ["organ", "tumour", "whole"]
    for t in tests:
        if t.structure.key != "organ":
            continue
        a, b = _naive_pairs(rows, t.method, t.fraction, "organ", pairing, reference=reference)
        d = (np.array(a) - np.array(b)) * 100
        assert t.n == len(d) and t.mean_diff == pytest.approx(d.mean())
        assert t.p == pytest.approx(_naive_p(d))
    with_voco = [t for t in tests if "voco" in (t.method, t.reference)]
    # VoCo has seeds 0 and 1: 6 cases either way, 12 case × seed pairs
    assert {t.n for t in with_voco} == ({12} if pairing == "case-seed" else {6})


def test_common_seeds_average_only_the_shared_seeds() -> None:
    """VoCo lacks seed 2: by case, Random's mean takes it in; over common seeds it does not."""
    rows = _rows()
    by_case = next(t for t in paired_tests(rows, pairing="case")
                   if t.method == "voco" and t.fraction == 5 and t.structure.key == "organ")
    common = next(t for t in paired_tests(rows, pairing="common-seeds")
                  if t.method == "voco" and t.fraction == 5 and t.structure.key == "organ")
    voco = _naive_scores(rows, "voco", 5, "organ", "zero", "dice")
    rand = _naive_scores(rows, "random", 5, "organ", "zero", "dice")
    for t, seeds in ((by_case, (0, 1, 2)), (common, (0, 1))):
        diffs = [np.mean([voco[c, s] for s in (0, 1)]) - np.mean([rand[c, s] for s in seeds])
                 for c in CASES]
        assert t.mean_diff == pytest.approx(100 * np.mean(diffs))
    assert by_case.mean_diff != pytest.approx(common.mean_diff)


def test_case_seed_and_common_seed_hand_values() -> None:
    """Two cases, two seeds; PiMPiC's organ Dice is Random's + 1 pp per seed + 2 pp on case b:
    differences 1, 2, 3, 4 pp. Four positive distinct differences: the exact two-sided p is
    2 / 2**4; by case (1.5 and 3.5 pp) two of two: 2 / 2**2."""
    rows = []
    for method in ("random", "pimpic"):
        for seed in (0, 1):
            for case, extra in (("a", 0.0), ("b", 0.2)):
                bump = 0.0 if method == "random" else 0.01 * (1 + seed) + extra / 10
                rows.append({"method": method, "fraction": 5, "seed": seed, "case": case,
                             "dice_organ": 0.4 + extra + bump, "hd95_organ": 1.0})
    seed_pairs = paired_tests(rows, pairing="case-seed")[0]
    assert (seed_pairs.n, round(seed_pairs.mean_diff, 6), seed_pairs.p) == (4, 2.5, 0.125)
    cases = paired_tests(rows, pairing="common-seeds")[0]
    assert (cases.n, round(cases.mean_diff, 6), cases.p) == (2, 2.5, 0.5)
    assert paired_tests(rows, pairing="case")[0].p == 0.5


def test_absent_rule_and_hd95() -> None:
    rows = _rows()
    zero = next(t for t in paired_tests(rows) if t.method == "pimpic" and t.fraction == 100
                and t.structure.key == "tumour")
    left_out = next(t for t in paired_tests(rows, absent="nan") if t.method == "pimpic"
                    and t.fraction == 100 and t.structure.key == "tumour")
    assert zero.n == 6 and left_out.n == 5  # c0 scores 0 for both, or drops out
    a, b = _naive_pairs(rows, "pimpic", 100, "tumour", "case", absent="nan")
    assert left_out.mean_diff == pytest.approx(100 * (np.mean(a) - np.mean(b)))
    # HD95 in mm (not × 100); the missed case-run of seed 1 is left out of c2's mean
    hd = paired_tests(rows, metric="hd95", pairing="case-seed")
    t = next(x for x in hd if x.method == "pimpic" and x.fraction == 5
             and x.structure.key == "organ")
    a, b = _naive_pairs(rows, "pimpic", 5, "organ", "case-seed", metric="hd95")
    assert t.n == len(a) == 17 and t.mean_diff == pytest.approx(np.mean(a) - np.mean(b))
    assert t.p == pytest.approx(wilcoxon(a, b).pvalue)
    tumour = next(x for x in hd if x.method == "pimpic" and x.structure.key == "tumour")
    assert tumour.n == 15  # the absent tumour has no HD95 to score, whatever the rule
    text = statistics.format_stats(hd)
    assert "Δ HD95 (mm) vs Random + Aug" in text and "in mm." in text
    assert "over case × seed pairs (one pair per test case and seed both have;" in text


def test_holm_against_hand_values() -> None:
    adjusted = holm([0.01, 0.04, math.nan, 0.03])
    # sorted 0.01, 0.03, 0.04 × 3, 2, 1 = 0.03, 0.06, 0.04 → never below the one before
    assert adjusted[0] == pytest.approx(0.03) and adjusted[3] == pytest.approx(0.06)
    assert adjusted[1] == pytest.approx(0.06) and math.isnan(adjusted[2])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    tests = paired_tests(_rows())
    valid = [t for t in tests if not math.isnan(t.p)]
    assert [t.p_holm for t in valid] == pytest.approx(holm([t.p for t in valid]))


def test_reasons_a_test_is_not_made() -> None:
    rows = _rows()
    same = [{**r, "method": "voco"} for r in rows if r["method"] == "random"]
    tests = paired_tests([r for r in rows if r["method"] == "random"] + same)
    assert {t.reason for t in tests} == {"all differences are zero"}
    one = [r for r in rows if r["case"] == "c1"]
    assert {t.reason for t in paired_tests(one)} == {"fewer than 2 paired cases"}
    assert {t.reason for t in paired_tests(one, pairing="case-seed")} == {""}  # 3 or 2 seeds
    no_ref = paired_tests([r for r in rows if r["method"] != "random"],
                          methods=["random", "pimpic"])
    assert {t.reason for t in no_ref} == {"no Random + Aug results"}
    assert all(t.n == 0 and math.isnan(t.p) for t in no_ref)
    with pytest.raises(PimpicError, match="pairing 'seed'"):
        paired_tests(rows, pairing="seed")
    with pytest.raises(PimpicError, match="metric 'iou'"):
        paired_tests(rows, metric="iou")


def test_table_and_reading() -> None:
    tests = paired_tests(_rows(), methods=["random", "pimpic", "voco"], fractions=[5, 100])
    text = statistics.format_stats(tests)
    lines = text.splitlines()
    assert lines[0] == ("| Structure | Labels | Method | n | Δ Dice (pp) vs Random + Aug | "
                        "p (Wilcoxon) | p (Holm) |")
    assert lines[2].startswith("| Organ | 5 % | PiMPiC | 6 | ")
    assert "over test cases (paired by case, Dice averaged over seeds first;" in text
    organ = PairedTest("pimpic", "random", 5, ORGAN_TUMOUR.structures[0], "dice", "case", 8,
                       6.0, 3.0, 0.004, p_holm=0.008)
    sentences = statistics.format_reading([
        organ,
        PairedTest("pimpic", "random", 100, organ.structure, "dice", "case", 8, 0.5, 3.0,
                   0.04, p_holm=0.08),
        PairedTest("pim", "random", 5, organ.structure, "dice", "case", 1, 1.0, math.nan,
                   math.nan, "fewer than 2 paired cases"),
        PairedTest("pimpic", "random", 5, ORGAN_TUMOUR.structures[1], "dice", "case", 8, 9.0,
                   1.0, 0.001, p_holm=0.002),
    ]).splitlines()
    assert len(sentences) == 3  # organ only
    assert sentences[0] == ("- PiMPiC at 5 % labels: +6.0 points organ Dice vs Random + Aug "
                            "over 8 test cases — a significant gain (p = 0.004, Holm 0.008).")
    assert "not significant" in sentences[1]  # p < 0.05 uncorrected is not enough
    assert "not testable (fewer than 2 paired cases)" in sentences[2]
    assert statistics.format_stats([]).startswith("No paired comparison")


LABELS = parse_labels({"background": 0, "brainstem": 1, "spinal cord": 2, "mandible": 3},
                      "dataset.json", by_name=True)


def _named_rows() -> list[dict[str, Any]]:
    """Three named structures, one seed; PiMPiC ahead on the brainstem only."""
    rng = np.random.default_rng(1)
    rows = []
    for method, shift in (("random", 0.0), ("pimpic", 0.1)):
        for i, case in enumerate(CASES):
            row: dict[str, Any] = {"method": method, "fraction": 5, "seed": 0, "case": case}
            for s in LABELS.structures:
                bump = shift + 0.01 * i if s.key == "brainstem" else 0.0
                row[f"dice_{s.key}"] = 0.6 + rng.uniform(0, 0.1) + bump
                row[f"hd95_{s.key}"] = 4.0
            rows.append(row)
    return rows


def test_any_label_set_gets_a_test_per_structure() -> None:
    rows = _named_rows()
    tests = paired_tests(rows, structures=LABELS.structures)
    assert [t.structure.key for t in tests] == ["brainstem", "spinal_cord", "mandible"]
    valid = sorted(t.p for t in tests if not math.isnan(t.p))
    # Holm over all the structures' tests: the smallest p times their number
    assert tests[0].p == valid[0] and tests[0].p_holm == pytest.approx(3 * valid[0])
    assert "| spinal cord | 5 % | PiMPiC | 6 |" in statistics.format_stats(tests)
    assert "brainstem Dice" in statistics.format_reading(tests, "brainstem")
    # without the label set, the structures come from the columns
    assert [t.structure for t in paired_tests(rows)][:1] == [
        Structure("brainstem", "brainstem", ())]


def write_run(run: Path, fraction: int, seed: int, per_case: list[list[Any]]) -> Path:
    """A fine-tuning run folder as ``pimpic finetune`` + ``pimpic evaluate`` leave it, reduced
    to what the statistics read: marker, config, run.json, eval-test/per_case.csv."""
    write_run_info(run, fraction=fraction)
    (run / CONFIG).write_text(yaml.safe_dump({"fraction": fraction, "seed": seed}))
    per_case_csv(eval_dir(run) / PER_CASE, per_case)
    return run


def test_read_comparison_experiment_and_outside_runs(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    exp.mkdir()
    rows = [r for r in _rows() if r["method"] != "voco"]
    results.write_results_csv(rows, exp / RESULTS)
    (exp / CONFIG).write_text(yaml.safe_dump({"cache": "c", "methods": ["random", "pimpic"],
                                              "fractions": [100, 5], "absent": "nan"}))
    frozen = [write_run(tmp_path / f"frozen_s{s}", 5, s,
                        [[c, 0.5 + 0.01 * i + 0.001 * s, "nan", 0.6] for i, c in
                         enumerate(CASES)]) for s in (0, 1)]
    got = statistics.read_comparison(exp, [("frozen", run) for run in frozen])
    assert got.methods == ["random", "pimpic", "frozen"] and got.fractions == [100, 5]
    assert got.absent == "nan" and len(got.rows) == len(rows) + 2 * 6
    extra = [r for r in got.rows if r["method"] == "frozen"]
    assert {(r["fraction"], r["seed"], r["n_train_cases"]) for r in extra} == {
        (5, 0, 2), (5, 1, 2)}
    tests = paired_tests(got.rows, methods=got.methods, fractions=got.fractions,
                         pairing="case-seed")
    frozen_organ = next(t for t in tests if t.method == "frozen" and t.fraction == 5
                        and t.structure.key == "organ")
    assert frozen_organ.n == 12  # seeds 0 and 1 of Random's three, six cases
    assert [t.fraction for t in tests[:3]] == [100, 100, 5]
    with pytest.raises(PimpicError, match="already has a method 'pimpic'"):
        statistics.read_comparison(exp, [("pimpic", frozen[0])])
    with pytest.raises(PimpicError, match="not a pimpic fine-tuning run"):
        statistics.read_comparison(None, [("x", tmp_path)])
    (tmp_path / "no_eval").mkdir()
    for name in (MARKER, CONFIG, RUN_INFO):
        (tmp_path / "no_eval" / name).write_bytes((frozen[0] / name).read_bytes())
    with pytest.raises(PimpicError, match="evaluate the run first"):
        statistics.read_comparison(None, [("x", tmp_path / "no_eval")])
    # a results.csv alone: its methods and fractions as they come
    csv_only = statistics.read_comparison(exp / RESULTS)
    assert csv_only.methods == ["random", "pimpic"] and csv_only.fractions == [5, 100]
    assert csv_only.absent == "zero"


def test_an_experiments_structures_are_named_by_its_cache(tmp_path: Path) -> None:
    exp, cache = tmp_path / "exp", tmp_path / "cache"
    exp.mkdir()
    rows = [{**r, "n_train_cases": 3} for r in _named_rows()]
    results.write_results_csv(rows, exp / RESULTS)
    config = {"cache": str(cache), "methods": ["random", "pimpic"], "fractions": [5]}
    (exp / CONFIG).write_text(yaml.safe_dump(config))
    assert statistics.read_comparison(exp).structures is None  # the cache is gone
    write_manifest(cache, {}, [], source="d", layout="nnunet", labels=LABELS)
    got = statistics.read_comparison(exp)
    assert got.structures == LABELS.structures  # "spinal cord", not the column's spinal_cord
    write_manifest(cache, {}, [], source="d", layout="nnunet")  # other labels: the columns
    assert statistics.read_comparison(exp).structures is None


def test_report_reading_is_the_default_pairing() -> None:
    """stats.md's reading (by case, seeds averaged first) is the ``case`` pairing: the per-case
    means of results.per_case (the table's) paired."""
    rows = _rows()
    for t in paired_tests(rows):
        a, _ = results.per_case(rows, t.method, t.fraction, t.structure.key)
        b, _ = results.per_case(rows, "random", t.fraction, t.structure.key)
        common = sorted(set(a) & set(b))
        d = np.array([a[c] - b[c] for c in common]) * 100
        assert t.mean_diff == pytest.approx(d.mean())


def test_naive_p_is_scipys_exact_p() -> None:
    """The reference itself, against scipy on small samples without ties."""
    rng = np.random.default_rng(0)
    for n in (3, 5, 8):
        for shift in (0.0, 0.5, 1.5):
            d = rng.normal(shift, 1.0, n)
            assert _naive_p(d) == pytest.approx(wilcoxon(d).pvalue)
