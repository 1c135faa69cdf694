"""Dataset readers: turn a dataset root into a list of cases ``{"id", "image", "label"}``.

:data:`LAYOUTS` is the table of layouts: name → :class:`LayoutReader`, an object with
``detect`` (does a folder look like this layout?), ``read`` (its cases) and ``labels`` (the
labels it names). A layout is detected in table order, or forced with ``layout=``; a new layout
is its reader (a class, in its own file) and one entry. Four are understood:

``msd``
    Medical Segmentation Decathlon: ``dataset.json`` with a ``training`` list of
    ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}`` and ``labels``
    ``{"0": "background", "1": "pancreas", "2": "cancer"}``. Only the labelled ``training``
    list is read. Listed names starting with ``._`` (macOS resource forks) are skipped; any
    other hidden name (``..nii.gz``) is refused by the case id check, never dropped.
``kits19``
    ``case_XXXXX/imaging.nii.gz`` + ``case_XXXXX/segmentation.nii.gz`` (0 background,
    1 kidney, 2 tumour). The files are slices-first; orientation comes from the affine
    during preprocessing, never from a hand-written transpose.
``nnunet``
    nnU-Net v2 raw: ``dataset.json`` (``channel_names``, ``labels`` name → value,
    ``file_ending``), ``imagesTr/{case}_0000.nii.gz``, ``labelsTr/{case}.nii.gz``.
``folder``
    Any folder of NIfTI volumes (searched recursively), unlabelled — a pretraining pool.
    Label maps are never taken for CT: folders named ``labels*`` (``labelsTr/`` of an MSD or
    nnU-Net tree) and KiTS19 ``segmentation.nii.gz`` files are skipped. It accepts any folder
    with a NIfTI file, so it is tried last.

A case id names the case's folder in the cache, so every id is checked when the dataset is
read (:func:`check_case_ids`): it must be non-empty, not start with ``.`` (``.``, ``..`` and
hidden names), hold no path separator, control or other character unsafe in a folder name,
and stay unique when compared the way case-insensitive file systems do (Unicode NFC,
case-folded). A bad id is a one-line error naming the file it came from.

Each case dict may also carry ``label_values``: the label values the dataset names (a label
volume holding any other value is rejected during preprocessing). The names themselves, and the
structures scored from them, are :func:`read_labels` (:mod:`pimpic.data.labels`). Files are
not opened here; a listed file that is missing is reported when its case is preprocessed, so
``prepare --skip-bad`` can carry on with the others.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from pimpic.data.labels import KITS19, LabelSet, parse_labels
from pimpic.errors import PimpicError
from pimpic.io import read_json

NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: characters refused in a case id besides control characters (separators, Windows-reserved)
UNSAFE_ID_CHARS = frozenset('/\\<>:"|?*')
MAX_ID_BYTES = 200


def read_dataset(root: str | Path, layout: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Read the case list of a dataset.

    Args:
        root: dataset folder.
        layout: a name of :data:`LAYOUTS` (``msd``, ``kits19``, ``nnunet``, ``folder``);
            ``None`` detects it.

    Returns:
        ``(layout, cases)``; each case is ``{"id": str, "image": Path, "label": Path | None,
        "label_values": list[int] | None}``, sorted by id.
    """
    root = Path(root)
    if not root.is_dir():
        raise PimpicError(f"{root}: dataset folder does not exist")
    if layout is None:
        layout = detect_layout(root)
    cases = _layout(layout).read(root)
    if not cases:
        raise PimpicError(f"{root}: no cases found for layout '{layout}'")
    check_case_ids(cases, root)
    return layout, sorted(cases, key=lambda c: c["id"])


def case_id_from_image(path: str | Path) -> str:
    """The case id of an image path as listed in a ``dataset.json``: its file name without
    ``.nii``/``.nii.gz`` (``./imagesTr/pancreas_001.nii.gz`` → ``pancreas_001``)."""
    return _strip_nifti(PurePosixPath(str(path).replace("\\", "/")).name)


def check_case_ids(cases: list[dict[str, Any]], root: str | Path) -> None:
    """Refuse ids that cannot safely name a cache folder, and ids that collide.

    Raises:
        PimpicError: naming the image file whose id is empty, hidden, unsafe, too long, or the
            same as another case's id after NFC normalisation and case folding.
    """
    seen: dict[str, dict[str, Any]] = {}
    for case in cases:
        cid = case["id"]
        problem = _id_problem(cid)
        if problem:
            raise PimpicError(f"{case['image']}: case id {cid!r} {problem}; rename the file "
                              "(the id names the case's folder in the cache)")
        key = unicodedata.normalize("NFC", cid).casefold()
        other = seen.setdefault(key, case)
        if other is not case and other["id"] == cid:
            raise PimpicError(f"{case['image']}: duplicate case id {cid!r} (also from "
                              f"{other['image']}); rename one of them")
        if other is not case:
            raise PimpicError(f"{case['image']}: case id {cid!r} collides with {other['id']!r} "
                              f"from {other['image']} (one folder on case-insensitive or "
                              "Unicode-normalising file systems); rename one of them")


def _id_problem(cid: str) -> str | None:
    if not cid:
        return "is empty"
    if cid.startswith("."):
        return "starts with '.'"
    bad = sorted({c for c in cid if c in UNSAFE_ID_CHARS or not c.isprintable()})
    if bad:
        return f"contains {''.join(bad)!r}, unsafe in a folder name"
    if cid != cid.strip():
        return "starts or ends with white space"
    if len(cid.encode()) > MAX_ID_BYTES:
        return f"is longer than {MAX_ID_BYTES} bytes"
    return None


def detect_layout(root: Path) -> str:
    """The first layout of :data:`LAYOUTS` whose ``detect`` accepts ``root``."""
    ds = root / "dataset.json"
    if (root / "imagesTr").is_dir() and not ds.is_file():
        raise PimpicError(f"{ds}: file not found (an imagesTr/ layout needs its dataset.json)")
    for name, layout in LAYOUTS.items():
        if layout.detect(root):
            return name
    raise PimpicError(f"{root}: empty folder — no dataset.json, case_*/imaging.nii.gz "
                      "or NIfTI files")


def _layout(name: str) -> LayoutReader:
    if name not in LAYOUTS:
        raise PimpicError(f"unknown layout {name!r}; choose one of {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def _is_nnunet(root: Path) -> bool:
    """nnU-Net v2 raw: a ``dataset.json`` with ``channel_names`` or ``file_ending``."""
    meta = read_json(root / "dataset.json") if (root / "dataset.json").is_file() else None
    return isinstance(meta, dict) and ("channel_names" in meta or "file_ending" in meta)


def _is_kits19(root: Path) -> bool:
    return any(_visible(p) and (p / "imaging.nii.gz").is_file() for p in root.glob("case_*"))


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def _strip_nifti(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _nifti_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and _is_nifti(p)
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _dataset_json(root: Path) -> dict[str, Any]:
    path = root / "dataset.json"
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise PimpicError(f"{path}: malformed dataset.json (expected a JSON object)")
    return meta


def read_labels(root: str | Path, layout: str) -> LabelSet | None:
    """The labels dataset ``root`` names (:mod:`pimpic.data.labels`): its ``dataset.json``
    ``labels`` (MSD, nnU-Net), KiTS19's own, or None for an unlabelled ``folder``."""
    return _layout(layout).labels(Path(root))


def _labels(meta: dict[str, Any], path: Path, layout: str) -> LabelSet:
    if layout == "nnunet" and meta.get("labels") is None:
        raise PimpicError(f"{path}: no 'labels' (an nnU-Net dataset names its label values)")
    return parse_labels(meta.get("labels"), path, by_name=layout == "nnunet")


def _resolve(path: Path) -> Path:
    """``path.resolve()``; a symlink loop is a one-line error naming it."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as err:  # RuntimeError before Python 3.13, then ELOOP
        raise PimpicError(f"{path}: cannot be resolved ({err.__class__.__name__}: a symlink "
                          "loop?); fix or remove that link") from None


def _read_msd(root: Path) -> list[dict[str, Any]]:
    path = root / "dataset.json"
    meta = _dataset_json(root)
    training = meta.get("training")
    if not isinstance(training, list):
        raise PimpicError(f"{path}: malformed dataset.json (no 'training' list)")
    label_values = list(_labels(meta, path, "msd").values)
    cases = []
    for n, entry in enumerate(training):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise PimpicError(f"{path}: training entry {n} has no 'image' path")
        image = _resolve(root / entry["image"])
        if PurePosixPath(entry["image"].replace("\\", "/")).name.startswith("._"):
            continue  # a listed macOS resource fork; any other hidden name meets the id check
        label = entry.get("label")
        cases.append({
            # the listed name, not the resolved one: a symlinked file keeps its case id
            "id": case_id_from_image(entry["image"]),
            "image": image,
            "label": _resolve(root / label) if isinstance(label, str) else None,
            "label_values": label_values,
        })
    return cases


def _read_kits19(root: Path) -> list[dict[str, Any]]:
    cases = []
    for d in sorted(root.glob("case_*")):
        if not (d.is_dir() and _visible(d)):
            continue
        seg = d / "segmentation.nii.gz"
        cases.append({
            "id": d.name,
            "image": d / "imaging.nii.gz",
            # KiTS19 test cases (210+) ship without segmentation
            "label": seg if seg.is_file() else None,
            "label_values": list(KITS19.values),
        })
    return cases


def _read_nnunet(root: Path) -> list[dict[str, Any]]:
    path = root / "dataset.json"
    meta = _dataset_json(root)
    ending = meta.get("file_ending", ".nii.gz")
    if not isinstance(ending, str):
        raise PimpicError(f"{path}: malformed dataset.json ('file_ending' must be a string)")
    label_values = list(_labels(meta, path, "nnunet").values)
    images = root / "imagesTr"
    if not images.is_dir():
        raise PimpicError(f"{images}: folder not found")
    suffix = "_0000" + ending
    cases = []
    for img in sorted(images.iterdir()):
        if not (_visible(img) and img.name.endswith(suffix)):
            continue
        cid = img.name[: -len(suffix)]
        cases.append({"id": cid, "image": img, "label": root / "labelsTr" / (cid + ending),
                      "label_values": label_values})
    return cases


def _is_label_map(rel: Path) -> bool:
    """``labelsTr/x.nii.gz`` (MSD, nnU-Net) or ``case_x/segmentation.nii.gz`` (KiTS19)."""
    return (any(part.lower().startswith("labels") for part in rel.parts[:-1])
            or _strip_nifti(rel.name) == "segmentation")


def _read_folder(root: Path) -> list[dict[str, Any]]:
    cases = []
    real_root = root.resolve()
    for p in _nifti_files(root):
        rel, real = p.relative_to(root), _resolve(p)
        # a link to a label map is a label map too
        if _is_label_map(rel) or (real.is_relative_to(real_root)
                                  and _is_label_map(real.relative_to(real_root))):
            continue
        cid = "_".join([*rel.parts[:-1], _strip_nifti(p.name)])
        cases.append({"id": cid, "image": p, "label": None, "label_values": None})
    return cases


class LayoutReader(Protocol):
    """An entry of :data:`LAYOUTS`: how to recognise and read one dataset layout."""

    def detect(self, root: Path) -> bool:
        """Does ``root`` look like this layout? (cheap; may read a ``dataset.json``)"""
        ...

    def read(self, root: Path) -> list[dict[str, Any]]:
        """The cases ``{"id", "image", "label", "label_values"}`` in any order
        (:func:`read_dataset` sorts them and checks their ids)."""
        ...

    def labels(self, root: Path) -> LabelSet | None:
        """The labels the dataset names (None: unlabelled images)."""
        ...


@dataclass(frozen=True)
class Layout:
    """A :class:`LayoutReader` made of three functions (the built-in layouts)."""

    detect: Callable[[Path], bool]
    read: Callable[[Path], list[dict[str, Any]]]
    labels: Callable[[Path], LabelSet | None]


def _dataset_labels(layout: str) -> Callable[[Path], LabelSet]:
    return lambda root: _labels(_dataset_json(root), root / "dataset.json", layout)


#: the layout table, in detection order (``folder`` accepts any NIfTI file: keep it last)
LAYOUTS: dict[str, LayoutReader] = {
    "nnunet": Layout(_is_nnunet, _read_nnunet, _dataset_labels("nnunet")),
    "msd": Layout(lambda root: (root / "dataset.json").is_file(), _read_msd,
                  _dataset_labels("msd")),
    "kits19": Layout(_is_kits19, _read_kits19, lambda root: KITS19),
    "folder": Layout(lambda root: bool(_nifti_files(root)), _read_folder, lambda root: None),
}
