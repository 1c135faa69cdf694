"""Prediction: masks on the input's own grid (non-RAS, anisotropic), folders, bad input."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

import pimpic.segmentation.predict
from pimpic.errors import PimpicError
from pimpic.io import write_json
from pimpic.models.unet import Encoder, SegmentationNet
from pimpic.segmentation.model_file import save_model
from pimpic.segmentation.predict import predict

SETTINGS = {"spacing": [1.5, 1.5, 1.5], "window": [-200.0, 400.0], "crop_foreground": False,
            "dtype": "float16"}
# axis 0 → −y at 1.0 mm, axis 1 → −x at 0.8 mm, axis 2 → +z at 2.5 mm: not RAS, anisotropic
AFFINE = np.array([[0.0, -0.8, 0.0, 10.0], [-1.0, 0.0, 0.0, 20.0], [0.0, 0.0, 2.5, -5.0],
                   [0.0, 0.0, 0.0, 1.0]])
SHAPE = (20, 26, 9)
BOX = (slice(5, 14), slice(6, 20), slice(2, 7))


@pytest.fixture
def run(tmp_path):
    torch.manual_seed(0)
    run_dir = tmp_path / "run"
    save_model(run_dir / "model.safetensors", SegmentationNet(Encoder(1, 2, 3), 3),
               {"patch_size": 16, "settings": SETTINGS, "fraction": 100})
    write_json(run_dir / "run.json", {"patch_size": 16, "settings": SETTINGS, "num_classes": 3})
    return run_dir


def _image(path, shape=SHAPE):
    hu = np.full(shape, -100.0, np.float32)
    hu[BOX] = 300.0
    nib.save(nib.Nifti1Image(hu, AFFINE), str(path))
    return path


def test_mask_has_input_shape_and_affine(tmp_path, run):
    img = _image(tmp_path / "scan.nii.gz")
    (out,) = predict([img], run, tmp_path / "out", progress=False)
    assert out.name == "scan_seg.nii.gz"
    seg = nib.load(str(out))
    assert seg.shape == SHAPE and np.allclose(seg.affine, AFFINE)
    data = np.asarray(seg.dataobj)
    assert data.dtype == np.uint8 and set(np.unique(data).tolist()) <= {0, 1, 2}


def test_mask_lands_on_the_right_voxels(tmp_path, run, monkeypatch):
    def threshold(model, image, patch_size, **kwargs):
        return (np.asarray(image) > 0.5).astype(np.uint8)  # "organ" = the bright box

    monkeypatch.setattr(pimpic.segmentation.predict, "predict_labels", threshold)
    img = _image(tmp_path / "scan.nii")
    (out,) = predict([img], run, tmp_path / "out", progress=False)
    mask = np.asarray(nib.load(str(out)).dataobj) == 1
    truth = np.zeros(SHAPE, bool)
    truth[BOX] = True
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.85


def test_folder_input_and_bad_input(tmp_path, run):
    folder = tmp_path / "scans"
    folder.mkdir()
    _image(folder / "a.nii.gz", (16, 16, 8))
    _image(folder / "b.nii", (16, 16, 8))
    (folder / "._a.nii.gz").write_bytes(b"macOS resource fork")
    (folder / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    written = predict([folder], run, out, progress=False)
    assert [p.name for p in written] == ["a_seg.nii.gz", "b_seg.nii.gz"]
    with pytest.raises(PimpicError, match="exists"):
        predict([folder], run, out, progress=False)
    predict([folder / "a.nii.gz"], run, out, overwrite=True, progress=False)

    two = tmp_path / "two_channels.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.float32), np.eye(4)), str(two))
    with pytest.raises(PimpicError, match="2 channel"):
        predict([two], run, tmp_path / "o2", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PimpicError, match=r"no \.nii"):
        predict([empty], run, tmp_path / "o3", progress=False)
    with pytest.raises(PimpicError, match="no such file"):
        predict([tmp_path / "missing.nii.gz"], run, tmp_path / "o4", progress=False)
    with pytest.raises(PimpicError, match="no model"):
        predict([folder], tmp_path, tmp_path / "o5", progress=False)


def test_out_that_is_a_file_is_one_line_and_left_alone(tmp_path, run):
    img = _image(tmp_path / "scan.nii.gz")
    target = tmp_path / "results.txt"
    target.write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(PimpicError, match=r"results\.txt: exists and is not a folder"):
            predict([img], run, target, overwrite=overwrite, progress=False)
    assert target.read_text() == "mine"
    with pytest.raises(PimpicError, match="cannot create the output folder"):
        predict([img], run, target / "masks", progress=False)


def test_an_image_whose_pixdim_disagrees_with_its_sform_is_refused(tmp_path, run):
    """Issue #23 E46: MONAI gave such an image another geometry and predict wrote 0.7 %."""
    from _nifti import save_stale_pixdim

    hu = np.full(SHAPE, -100.0, np.float32)
    img = save_stale_pixdim(tmp_path / "stale.nii.gz", hu, AFFINE)
    with pytest.raises(PimpicError, match=r"stale\.nii\.gz: image header is inconsistent"):
        predict([img], run, tmp_path / "out", progress=False)
    assert not list((tmp_path / "out").glob("*.nii.gz"))


def test_a_folder_s_earlier_masks_are_not_segmented_again(tmp_path, run):
    """Issue #23 E40b: predicting into the input folder, then again, segmented the masks."""
    folder = tmp_path / "scans"
    folder.mkdir()
    _image(folder / "a.nii.gz", (16, 16, 8))
    assert [p.name for p in predict([folder], run, folder, overwrite=True, progress=False)] \
        == ["a_seg.nii.gz"]
    again = predict([folder], run, folder, overwrite=True, progress=False)
    assert [p.name for p in again] == ["a_seg.nii.gz"]
    assert sorted(p.name for p in folder.iterdir()) == ["a.nii.gz", "a_seg.nii.gz"]
