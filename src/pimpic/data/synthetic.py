"""A procedural abdominal CT cohort: ``pimpic synth``.

No public CT dataset can be downloaded on every machine, and users want to try pimpic before
they have data, so this generator stands in for one. It is **not** a benchmark of clinical
accuracy: anatomy, HU values and noise are plausible, not measured.

Each case (see :mod:`pimpic.data.anatomy`) has a body outline with skin, subcutaneous fat and a
muscle wall; spine (cortex, marrow, discs, canal, arch), ribs, paraspinal and psoas muscles;
lung bases; liver, gallbladder, spleen, stomach (wall, fluid, gas), kidneys (cortex, medulla,
sinus fat), pancreas (lobulated, by the splenic vein, SMA and duodenum), small bowel loops and
colon with gas and stool, aorta and vena cava, positions/sizes jittered and surfaces and the
whole body warped by smooth random fields. In 85 % of cases a lobulated tumour grows in the
target organ (:mod:`pimpic.data.synthetic_tumour`). A simulated acquisition (blur, correlated
noise and, with ``realistic`` variability, kernels and artefacts) finishes the image.

How much cases differ is a named preset, ``variability`` (:mod:`pimpic.data.synthetic_style`):
``realistic`` (the default) varies contrast phase, habitus, pose, field of view, slice
thickness, organ shape and placement, tumour size and kind, kernel, noise and artefacts as
multi-centre CT does, so that a model trained on a few labelled cases does not cover the
cohort; ``low`` is the original uniform cohort (one portal-venous phase, a fixed grid, small
tumours), byte-identical to earlier releases.

Output is an MSD-layout dataset: ``imagesTr/<task>_NNN.nii.gz`` (int16 HU, LPS-stored like most
DICOM conversions, anisotropic spacing — per case with ``realistic``), ``labelsTr/`` (uint8:
0 background, 1 organ — both kidneys for ``kidney`` — 2 tumour) and ``dataset.json``. The
nominal field of view is 180 × 180 × 120 mm (a slim, scaled-down abdomen: about 120 × 120 × 80
voxels at 1.5 mm).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pimpic import __version__
from pimpic.data import anatomy as A
from pimpic.data.synthetic_contrast import Contrast
from pimpic.data.synthetic_scanner import acquire
from pimpic.data.synthetic_style import VARIABILITY, draw_style
from pimpic.data.synthetic_tumour import paint_tumour
from pimpic.errors import PimpicError
from pimpic.io import read_json, write_json

TASKS = {"pancreas": (A.PANCREAS,), "kidney": (A.KIDNEY, A.MEDULLA)}
DEFAULT_SPACING = (0.8, 0.8, 2.5)
DEFAULT_FOV_MM = (180.0, 180.0, 120.0)


def default_shape(spacing: Sequence[float]) -> tuple[int, int, int]:
    """Voxels covering the default field of view at ``spacing`` (mm)."""
    return tuple(max(8, round(f / s)) for f, s in zip(DEFAULT_FOV_MM, spacing, strict=True))  # type: ignore[return-value]


def make_case(rng: np.random.Generator, shape: Sequence[int] = (225, 225, 48),
              spacing: Sequence[float] = DEFAULT_SPACING, task: str = "pancreas",
              variability: str = "realistic") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic case.

    Args:
        rng: the case's random generator (all randomness comes from it).
        shape: voxels ``(X, Y, Z)`` of the stored array (``realistic``: the nominal matrix; the
            case's slice count follows its slice spacing).
        spacing: voxel size in mm (``realistic``: nominal; each case draws its own).
        task: ``pancreas`` or ``kidney`` (which organ is labelled 1).
        variability: ``realistic`` or ``low`` (:mod:`pimpic.data.synthetic_style`).

    Returns:
        ``image`` (X, Y, Z) int16 HU, ``label`` (X, Y, Z) uint8, ``affine`` (4, 4) — stored
        L-P-S (the first two axes run toward the patient's left and posterior).
    """
    from scipy.ndimage import gaussian_filter

    if task not in TASKS:
        raise PimpicError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if variability not in VARIABILITY:
        raise PimpicError(f"unknown variability {variability!r}; choose one of "
                          f"{', '.join(VARIABILITY)}")
    shape = tuple(int(s) for s in shape)
    sp = np.asarray(spacing, np.float64)
    # L, mm: the body scales with the nominal field of view, not with this case's
    half_width = 0.44 * min(shape[0] * sp[0], shape[1] * sp[1])
    style = draw_style(rng, variability, shape, sp.tolist())
    acq = style.acquisition
    if acq is not None:
        shape, sp = acq.shape, np.asarray(acq.spacing, np.float64)
    half_width *= style.length_scale
    origin = np.array([sp[0] * (shape[0] - 1) / 2, sp[1] * (shape[1] - 1) / 2,
                       -sp[2] * (shape[2] - 1) / 2])
    affine = np.diag([-sp[0], -sp[1], sp[2], 1.0])
    affine[:3, 3] = origin
    world = [origin[i] + affine[i, i] * np.arange(shape[i]) for i in range(3)]
    axes = [world[0] / half_width, world[1] / half_width,
            world[2] / half_width + rng.uniform(-0.06, 0.06)]
    g = A.Grid(axes, rng, warp=style.warp, pose=style.pose)
    contrast = style.contrast or Contrast("low", float(rng.uniform(0.85, 1.15)))
    body = A.build_body(g, rng, contrast, style.patient)
    A.build_organs(g, rng, body)
    if acq is None:
        A.build_bowel(g, rng, body)
    if rng.uniform() < style.tumour.rate:
        paint_tumour(g, rng, np.isin(g.tissue, TASKS[task]), task, contrast, style.tumour)
    if acq is not None:  # bowel after the tumour, so loops fill around a mass, not through it
        A.build_bowel(g, rng, body)
    label = np.zeros(shape, np.uint8)
    label[np.isin(g.tissue, TASKS[task])] = 1
    label[g.tissue == A.TUMOUR] = 2

    if acq is None:
        # partial volume: ~0.6 mm in-plane and ~1 mm slice-profile blur, then correlated noise
        hu = gaussian_filter(g.hu, sigma=tuple(np.array([0.6, 0.6, 1.0]) / sp), mode="nearest")
        noise = gaussian_filter(rng.standard_normal(shape, dtype=np.float32),
                                sigma=(0.8, 0.8, 0.3))
        hu += noise * (rng.uniform(8.0, 18.0) / (noise.std() + 1e-6))
    else:
        hu = acquire(g, rng, acq)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return image, label, affine


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a NIfTI atomically (temporary name in the same folder, then rename)."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    tmp = path.with_name(f".{path.name[:-7]}.{os.getpid()}.tmp.nii.gz")
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def generate_cohort(
    out: str | Path,
    cases: int,
    task: str = "pancreas",
    seed: int = 0,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] = DEFAULT_SPACING,
    progress: bool = True,
    variability: str = "realistic",
) -> Path:
    """Write ``cases`` synthetic CT cases as an MSD-layout dataset in ``out``.

    Case ``i`` draws from ``np.random.default_rng([seed, i])``, so a cohort is reproducible
    and extending it keeps the existing cases. Rerunning with the same arguments is a no-op;
    an interrupted run resumes; a folder made with other arguments is an error. ``dataset.json``
    is written before the first case file, so a folder holding files without it is not synth's
    and is refused: a user's scan is never overwritten, nor listed as synthetic.

    Args:
        out: output folder.
        cases: number of cases (≥ 1).
        task: ``pancreas`` or ``kidney``.
        seed: cohort seed.
        shape: voxels per case; default covers 180 × 180 × 120 mm at ``spacing``.
        spacing: voxel size in mm (anisotropic like clinical CT by default); with
            ``realistic`` variability the nominal one, around which each case draws its own.
        progress: show a progress bar.
        variability: ``realistic`` (default: contrast phases, habitus, pose, field of view,
            slice thickness, kernels, artefacts and tumours vary as in multi-centre CT) or
            ``low`` (the original, uniform cohort); see :mod:`pimpic.data.synthetic_style`.

    Returns:
        ``out``.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    if task not in TASKS:
        raise PimpicError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if variability not in VARIABILITY:
        raise PimpicError(f"unknown variability {variability!r}; choose one of "
                          f"{', '.join(VARIABILITY)}")
    if cases < 1:
        raise PimpicError(f"--cases must be at least 1, got {cases}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise PimpicError(f"spacing {spacing} must be three positive millimetre values")
    shape = tuple(int(s) for s in shape) if shape is not None else default_shape(spacing)
    if len(shape) != 3 or min(shape) < 8:
        raise PimpicError(f"shape {shape} must be three sizes of at least 8 voxels")
    _check_memory(shape)
    params = {"task": task, "seed": seed, "cases": cases, "shape": list(shape),
              "spacing": list(spacing), "variability": variability}
    names = [f"{task}_{i:03d}.nii.gz" for i in range(cases)]
    if _existing(out, params):
        return out
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(tqdm(names, desc="synth", unit="case", disable=not progress)):
        img_path, lab_path = out / "imagesTr" / name, out / "labelsTr" / name
        if img_path.is_file() and lab_path.is_file():
            continue  # written by an interrupted run with the same arguments (dataset.json)
        image, label, affine = make_case(np.random.default_rng([seed, i]), shape, spacing, task,
                                          variability)
        if not (out / "dataset.json").is_file():  # before the first file: the folder is ours
            _write_dataset_json(out, params, names)
        _save_nifti(label, affine, lab_path)
        _save_nifti(image, affine, img_path)
    return out


def _write_dataset_json(out: Path, params: dict[str, Any], names: list[str]) -> None:
    task, variability, cases = params["task"], params["variability"], params["cases"]
    organ = "kidney" if task == "kidney" else "pancreas"
    write_json(out / "dataset.json", {
        "name": f"pimpic-synth-{task}",
        "description": f"Procedural abdominal CT (pimpic synth, {variability} variability); a "
                       "stand-in for real data, not a clinical benchmark",
        "tensorImageSize": "3D", "modality": {"0": "CT"},
        "labels": {"0": "background", "1": organ, "2": "tumour"},
        "numTraining": cases, "numTest": 0,
        "training": [{"image": f"./imagesTr/{n}", "label": f"./labelsTr/{n}"} for n in names],
        "test": [],
        "pimpic_synth": {**params, "pimpic_version": __version__},
    })


#: bytes of memory one voxel of a case needs while it is made (measured peak: ~130)
BYTES_PER_VOXEL = 160


def _check_memory(shape: tuple[int, ...]) -> None:
    """Refuse a ``shape`` whose case cannot fit in this machine's memory (before writing)."""
    need = float(np.prod(np.asarray(shape, dtype=np.float64))) * BYTES_PER_VOXEL
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        raise PimpicError(f"shape {','.join(map(str, shape))}: a case needs about "
                          f"{_gb(need)} of memory to make, more than this machine's "
                          f"{_gb(have)}; use a smaller --shape")


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def _existing(out: Path, params: dict[str, Any]) -> bool:
    """True when ``out`` already holds this exact cohort; error when it holds something else."""
    ds = out / "dataset.json"
    if ds.is_file():
        old = read_json(ds)
        made = old.get("pimpic_synth") if isinstance(old, dict) else None
        if not isinstance(made, dict):
            raise PimpicError(f"{ds}: not a pimpic synth dataset; choose another --out")
        made = {k: v for k, v in made.items() if k != "pimpic_version"}
        if made != params:
            diff = ", ".join(f"{k}={made.get(k)}" for k in params if made.get(k) != params[k])
            raise PimpicError(f"{out}: holds a synthetic cohort made with other arguments "
                              f"({diff}); choose another --out")
        files = [out / e[k] for e in old.get("training", []) for k in ("image", "label")]
        return all(f.is_file() for f in files)
    # no dataset.json: no case was written yet, so only empty imagesTr/labelsTr (or the
    # temporary files of a killed first write) may be there — never a user's scan
    if out.exists() and (not out.is_dir() or any(not _empty_case_folder(p)
                                                 for p in out.iterdir())):
        raise PimpicError(f"{out}: exists and is not a pimpic synth dataset (it holds files "
                          "synth did not write); choose another --out")
    return False


def _empty_case_folder(path: Path) -> bool:
    return (path.name in ("imagesTr", "labelsTr") and not path.is_symlink() and path.is_dir()
            and all(p.name.startswith(".") and p.name.endswith(".tmp.nii.gz")
                    for p in path.iterdir()))
