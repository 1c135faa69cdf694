"""Experiment figures: PNGs from results rows, loss curves from metrics.jsonl, overlays, and
the whole set from an experiment folder."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from pimpic.paths import METRICS, cell_dir, pretrain_dir
from pimpic.protocol import figures
from pimpic.protocol.grid import ExperimentConfig


def _rows() -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    return [{"method": m, "fraction": f, "n_train_cases": f // 10, "seed": 0, "case": f"c{i}",
             **{f"dice_{s}": float(rng.uniform(0.2, 0.9)) for s in ("organ", "tumour", "whole")},
             **{f"hd95_{s}": float(rng.uniform(1, 9)) for s in ("organ", "tumour", "whole")}}
            for m in ("random", "pimpic", "voco") for f in (10, 100) for i in range(4)]


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and \
        path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figures_are_pngs(tmp_path: Path) -> None:
    rows = _rows()
    p = figures.plot_dice_vs_fraction(rows, ["random", "pimpic", "voco"], [10, 100],
                                      tmp_path / "dice.png")
    assert _is_png(p)
    run = tmp_path / "pretrain" / "pimpic"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(
        f'{{"step": {s}, "loss": {1 / s}, "pim": {0.5 / s}, "pic": {0.5 / s}, "lr": 1e-5, '
        f'"pairs": 6}}\n' for s in range(1, 300)))
    assert _is_png(figures.plot_pretrain_losses({"pimpic": run, "pim": tmp_path / "x"},
                                                tmp_path / "loss.png"))
    assert figures.plot_pretrain_losses({"pim": tmp_path / "x"}, tmp_path / "none.png") is None
    label = np.zeros((24, 24, 12), np.uint8)
    label[6:16, 8:18, 3:9] = 1
    label[9:12, 10:13, 4:7] = 2
    image = np.random.default_rng(0).uniform(0, 1, label.shape).astype(np.float32)
    pred = np.roll(label, 2, axis=0)
    assert _is_png(figures.plot_overlays(image, label, {"random": pred, "pimpic": label},
                                         {"random": (0.7, math.nan), "pimpic": (1.0, 1.0)},
                                         tmp_path / "ov.png", "case c0"))


def test_write_figures_draws_what_an_experiment_folder_has(make_cache, tmp_path: Path) -> None:
    cache = make_cache(n_cases=10, shape=(16, 16, 16))
    cfg = ExperimentConfig(cache=str(cache), methods=("random", "pimpic"), fractions=(100,))
    exp = tmp_path / "exp"
    run = pretrain_dir(exp, "pimpic")
    run.mkdir(parents=True)
    (run / METRICS).write_text('{"step": 1, "loss": 1.0, "pim": 0.6, "pic": 0.4}\n'
                               '{"step": 2, "loss": 0.5, "pim": 0.3, "pic": 0.2}\n')
    rows = [r for r in _rows() if r["method"] != "voco" and r["fraction"] == 100]
    made = figures.write_figures(exp, cfg, rows)
    assert set(made) == {"dice_vs_fraction", "pretrain_loss"}  # no predictions: no overlay
    assert all(_is_png(p) for p in made.values())
    assert not cell_dir(exp, "random", 100, 0).exists()  # figures only read


def test_figures_of_a_named_label_set(tmp_path: Path) -> None:
    from pimpic.data.labels import parse_labels

    labels = parse_labels({"background": 0, "brainstem": 1, "spinal cord": 2, "parotid": 3,
                           "mandible": 4}, "dataset.json", by_name=True)
    rng = np.random.default_rng(0)
    rows = [{"method": m, "fraction": f, "n_train_cases": f // 10, "seed": 0, "case": f"c{i}",
             **{f"dice_{s.key}": float(rng.uniform(0.2, 0.9)) for s in labels.structures}}
            for m in ("random", "pimpic") for f in (10, 100) for i in range(3)]
    assert _is_png(figures.plot_dice_vs_fraction(rows, ["random", "pimpic"], [10, 100],
                                                 tmp_path / "dice.png",
                                                 structures=labels.structures))
    label = np.zeros((24, 24, 8), np.uint8)
    for v in range(1, 5):
        label[2 + 5 * (v - 1):6 + 5 * (v - 1), 6:18, 2:6] = v
    image = rng.uniform(0, 1, label.shape).astype(np.float32)
    dice = {"random": [0.5, math.nan, 0.7, 0.9]}
    assert [s.key for s in figures.overlay_structures(labels)] == [
        "brainstem", "spinal_cord", "parotid", "mandible"]
    assert _is_png(figures.plot_overlays(image, label, {"random": np.roll(label, 1, 0)}, dice,
                                         tmp_path / "ov.png", "case c0", labels))
