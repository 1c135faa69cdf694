"""Shared fixtures: tiny caches written directly in the cache layout (no preprocessing run)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from pimpic.data.cache import write_manifest
from pimpic.io import write_json

torch.set_num_threads(2)


def _phantom(
    shape: tuple[int, int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipsoid 'organ' (label 1) holding a darker 'tumour' (label 2) in soft tissue."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    centre = np.array(shape) * rng.uniform(0.35, 0.65, 3)
    radii = np.array(shape) * rng.uniform(0.15, 0.25, 3)
    r = np.sqrt((((grid - centre) / radii) ** 2).sum(-1))
    label = np.zeros(shape, np.uint8)
    label[r < 1] = 1
    t_centre = centre + radii * rng.uniform(-0.3, 0.3, 3)
    rt = np.sqrt((((grid - t_centre) / (radii * 0.4)) ** 2).sum(-1))
    label[(rt < 1) & (r < 1)] = 2
    image = 0.3 + 0.05 * rng.standard_normal(shape)
    image[label == 1] += 0.3
    image[label == 2] += 0.1
    return np.clip(image, 0, 1).astype(np.float16), label


def write_cache(
    root: Path,
    n_cases: int = 10,
    shape: tuple[int, int, int] = (40, 40, 40),
    labelled: bool = True,
    seed: int = 0,
) -> Path:
    """Write a cache with ``n_cases`` phantom cases, a manifest and a 70/10/20 split.

    The split is :func:`make_splits`'s, except that below 10 cases (where the released rule
    gives no validation case) the first test case becomes the validation case when test has
    two or more, so the small fine-tuning fixtures still exercise validation.
    """
    from pimpic.data.splits import make_splits

    rng = np.random.default_rng(seed)
    ids = [f"case_{i:03d}" for i in range(n_cases)]
    for cid in ids:
        d = root / "cases" / cid
        d.mkdir(parents=True)
        image, label = _phantom(shape, rng)
        np.save(d / "image.npy", image)
        if labelled:
            np.save(d / "label.npy", label)
        affine = np.diag([1.5, 1.5, 1.5, 1.0]).tolist()
        write_json(d / "meta.json", {
            "id": cid, "shape": list(shape), "spacing": [1.5, 1.5, 1.5], "affine": affine,
            "original_affine": affine, "original_shape": list(shape),
            "original_spacing": [1.5, 1.5, 1.5], "crop_box": [[0, 0, 0], list(shape)],
            "has_label": labelled, "source_image": f"{cid}.nii.gz",
            "source_label": f"{cid}_seg.nii.gz" if labelled else None,
        })
    write_manifest(root, {"spacing": [1.5, 1.5, 1.5], "window": [-200.0, 400.0],
                          "crop_foreground": False, "dtype": "float16"}, ids,
                   source="fixture", layout="fixture")
    splits = make_splits(ids, seed=seed)
    if not splits["val"] and len(splits["test"]) > 1:
        splits["val"], splits["test"] = splits["test"][:1], splits["test"][1:]
    write_json(root / "splits.json", splits)
    return root


def add_unlabelled(root: Path, n: int = 2, seed: int = 99) -> list[str]:
    """Add ``n`` unlabelled phantom cases (``arch_000`` …, as ``prepare --unlabelled`` caches
    them) to the cache ``root``: case folders, manifest, and the split's ``unlabelled``."""
    from pimpic.io import read_json

    rng = np.random.default_rng(seed)
    manifest = read_json(root / "manifest.json")
    shape = tuple(np.load(root / "cases" / manifest["cases"][0] / "image.npy").shape)
    ids = [f"arch_{i:03d}" for i in range(n)]
    for cid in ids:
        d = root / "cases" / cid
        d.mkdir(parents=True)
        np.save(d / "image.npy", _phantom(shape, rng)[0])  # type: ignore[arg-type]
        write_json(d / "meta.json", {"id": cid, "shape": list(shape), "has_label": False,
                                     "source_image": f"{cid}.nii.gz", "source_label": None,
                                     "content_sha256": f"{cid}-voxels"})
    write_json(root / "manifest.json", {**manifest, "cases": [*manifest["cases"], *ids],
                                        "unlabelled": ["archive"]})
    splits = read_json(root / "splits.json")
    write_json(root / "splits.json", {**splits, "unlabelled": ids})
    return ids


@pytest.fixture
def make_cache(tmp_path: Path) -> Callable[..., Path]:
    """``make_cache(n_cases=10, shape=(40,40,40), labelled=True)`` → path of a fresh cache."""
    counter = iter(range(1000))

    def make(**kwargs: object) -> Path:
        return write_cache(tmp_path / f"cache{next(counter)}", **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def openkbp() -> Path:
    """The OpenKBP head-and-neck CTs (Babier et al., Med. Phys. 48:5549, 2021) in the nnU-Net
    raw layout: ``$PIMPIC_OPENKBP``, default ``../shared/data/openkbp`` beside the repository;
    the test is skipped when they are absent (a fresh clone)."""
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "openkbp"
    root = Path(os.environ.get("PIMPIC_OPENKBP") or default)
    if not (root / "dataset.json").is_file():
        pytest.skip(f"OpenKBP data not found at {root} (set PIMPIC_OPENKBP)")
    return root
