"""nnU-Net backbones, preprocessed data and the export, with nnU-Net's own code (CPU).

The plans fixture ``nnunet_plans.json`` (beside this file) is a small hand-written plan: 4
stages of widths 4–32, strides (1,1,1), (1,2,2), (2,2,2), (2,2,2) (anisotropic, first stage
stride 1), in a PlainConvUNet (``3d_fullres``) and a ResidualEncoderUNet (``3d_resenc``)
variant, plus two configurations pimpic must refuse or tell apart (``3d_nostride1``,
``3d_narrow``).
"""

from __future__ import annotations

import errno
import json
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from _cli import assert_refused
from pimpic.cli import app
from pimpic.config import from_dict, load_yaml
from pimpic.errors import PimpicError
from pimpic.io import read_json
from pimpic.models import Encoder
from pimpic.models.backbone import check_backbone, pic_levels, pim_levels
from pimpic.models.export import read_encoder_metadata, save_encoder
from pimpic.pretraining.backbones import build_backbone, resolve_patch
from pimpic.pretraining.config import PretrainConfig
from pimpic.pretraining.engine import pretrain
from pimpic.registry import get_method

pytest.importorskip("nnunetv2")

DATA = Path(__file__).parent
PLANS = DATA / "nnunet_plans.json"
runner = CliRunner()


def _cfg(**kw: object) -> PretrainConfig:
    base: dict[str, object] = {
        "backbone": "nnunet", "nnunet_plans": str(PLANS), "nnunet_configuration": "3d_fullres",
        "patch_size": 16, "patches": 4, "steps": 2, "proj_dim": 8, "num_workers": 0,
        "log_every": 1, "checkpoint_every": 2, "lr": 1e-3, "seed": 1}
    base.update(kw)
    return from_dict(PretrainConfig, base)


def _nnunet_network(configuration: str = "3d_fullres") -> torch.nn.Module:
    """The network exactly as ``nnUNetTrainer.build_network_architecture`` builds it."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cm = PlansManager(str(PLANS)).get_configuration(configuration)
    return get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                  cm.network_arch_init_kwargs_req_import, 1, 3,
                                  allow_init=True, deep_supervision=True)


@pytest.mark.parametrize("configuration", ["3d_fullres", "3d_resenc"])
def test_encoder_pyramid_follows_the_plan(configuration: str) -> None:
    enc = build_backbone(_cfg(nnunet_configuration=configuration))
    strides = [lv.stride for lv in enc.levels]
    assert strides == [(1, 1, 1), (1, 2, 2), (2, 4, 4), (4, 8, 8)]
    check_backbone(enc, (8, 16, 24))
    feats = enc(torch.rand(2, 1, 16, 16, 16))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (4, 16, 16, 16), (8, 16, 8, 8), (16, 8, 4, 4), (32, 4, 2, 2)]
    # the levels are taken by stride: PiC at nominal strides 1, 2, 4; PiM the three deepest
    assert pic_levels(enc.levels) == [0, 1, 2] and pim_levels(enc.levels) == [1, 2, 3]
    # same tensor names as the network nnU-Net builds
    ours = set(enc.state_dict())
    theirs = {k for k in _nnunet_network(configuration).state_dict() if k.startswith("encoder.")}
    assert ours == theirs


def test_paper_unet_levels_are_by_stride() -> None:
    enc = Encoder(1, 2, 5)
    assert [lv.stride[0] for lv in enc.levels] == [1, 2, 4, 8, 16]
    assert pic_levels(enc.levels) == [0, 1, 2] and pim_levels(enc.levels) == [2, 3, 4]


@pytest.mark.parametrize("method", ["pimpic", "pim", "pic", "voco", "vox2vec"])
def test_every_method_runs_on_the_anisotropic_encoder(method: str) -> None:
    cfg = _cfg(method=method, voco={"grid": (2, 1), "num_random": 2, "proj_dim": 8},
               vox2vec={"num_voxels": 8, "proj_dim": 8})
    spec = get_method(method)
    module = spec.build_module(build_backbone(cfg), cfg)
    rng = np.random.default_rng(0)
    sample = spec.build_sampler(cfg)(rng.random((24, 24, 24)).astype(np.float32), rng)
    batch = {k: torch.as_tensor(v)[None] for k, v in sample.items()}
    out = module(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize(("configuration", "message"), [
    ("3d_nostride1", "missing 1"),
    ("2d_missing", "no configuration '2d_missing'"),
])
def test_unusable_plans_fail_in_one_line(configuration: str, message: str) -> None:
    with pytest.raises(PimpicError, match=message) as err:
        build_backbone(_cfg(nnunet_configuration=configuration))
    assert "\n" not in str(err.value)


def test_patch_must_fit_the_strides() -> None:
    with pytest.raises(PimpicError, match="not divisible by the stride"):
        build_backbone(_cfg(patch_size=12))


def test_a_box_patch_must_fit_the_strides_per_axis(tmp_path: Path) -> None:
    # total stride (4, 8, 8): 8 × 16 × 16 fits, 8 × 12 × 16 does not (axis 1, level 4)
    build_backbone(_cfg(patch_size=[8, 16, 16]))
    message = (r"patch_size \[8, 12, 16\] is not divisible by the stride \[4, 8, 8\] of "
               r"nnU-Net encoder level 4 on axis 1; use multiples of \[4, 8, 8\] \(the total "
               r"stride per axis\)")
    with pytest.raises(PimpicError, match=message):
        build_backbone(_cfg(patch_size=[8, 12, 16]))
    folder = write_preprocessed(tmp_path)
    res = runner.invoke(app, ["pretrain", str(folder), "--out", str(tmp_path / "run"),
                              "--set", "backbone=nnunet", "--set", "patch_size=[6,16,16]"])
    assert_refused(res, "patch_size [6, 16, 16] is not divisible by the stride [4, 8, 8]")
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def nnunet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step PiMPiC run of the nnU-Net 3d_fullres encoder on a tiny folder preprocessed with
    those plans (so it matches them: spacing, normalisation, strides)."""
    root = tmp_path_factory.mktemp("nnunet")
    pretrain(write_preprocessed(root), root / "run", _cfg(nnunet_plans=""), progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def cache_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same encoder pretrained on a pimpic cache: another spacing, a HU window in [0, 1]."""
    from conftest import write_cache

    root = tmp_path_factory.mktemp("nnunet_cache")
    cache = write_cache(root / "cache", n_cases=4, shape=(24, 24, 24))
    pretrain(cache, root / "run", _cfg(), progress=False)
    return root / "run"


def test_export_round_trip_through_nnunets_loader(nnunet_run: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    out = tmp_path / "checkpoint.pth"
    res = runner.invoke(app, ["export", "nnunet", str(nnunet_run), "--plans", str(PLANS),
                              "--configuration", "3d_fullres", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "pretrained encoder tensors" in res.output
    pretrained = load_file(str(nnunet_run / "encoder.safetensors"))
    torch.manual_seed(123)  # another initialisation than the export's
    network = _nnunet_network()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    load_pretrained_weights(network, str(out), verbose=False)
    print(capsys.readouterr().out.strip())  # nnU-Net's own line, kept in the test log
    state = network.state_dict()
    for key, value in pretrained.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
        torch.testing.assert_close(state[f"decoder.{key}"], value, rtol=0, atol=0)
    # the pretrained weights moved away from nnU-Net's fresh initialisation
    assert any(not torch.equal(before[k], v) for k, v in pretrained.items())
    saved = torch.load(out, weights_only=True)
    assert saved["pimpic"]["configuration"] == "3d_fullres"
    # same command, same bytes (decoder initialisation is seeded)
    again = tmp_path / "again.pth"
    runner.invoke(app, ["export", "nnunet", str(nnunet_run), "--plans", str(PLANS),
                        "--out", str(again)])
    assert again.read_bytes() == out.read_bytes()


def test_export_refuses_a_backbone_that_does_not_match(nnunet_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.pth"
    res = runner.invoke(app, ["export", "nnunet", str(nnunet_run), "--plans", str(PLANS),
                              "--configuration", "3d_narrow", "--out", str(out)])
    assert res.exit_code == 2 and not out.exists()
    assert "first mismatching layer encoder.stages.0.0.convs.0.conv.weight" in res.output
    assert "[4, 1, 1, 3, 3]" in res.output and "[2, 1, 1, 3, 3]" in res.output

    unet_run = tmp_path / "unet"
    unet_run.mkdir()
    save_encoder(unet_run / "encoder.safetensors", Encoder(1, 2, 3), {"method": "pimpic"})
    res = runner.invoke(app, ["export", "nnunet", str(unet_run), "--plans", str(PLANS),
                              "--out", str(out)])
    assert_refused(res, "unet3d-encoder backbone does not match",
                   "encoder.stages.0.0.convs.0.conv.weight")
    assert not out.exists()


def _export(run: Path, out: Path, *extra: str, plans: Path = PLANS) -> Any:
    return runner.invoke(app, ["export", "nnunet", str(run), "--plans", str(plans),
                               "--out", str(out), *extra])


def test_export_refuses_a_run_pretrained_otherwise_than_the_plans(cache_run: Path,
                                                                  tmp_path: Path) -> None:
    """X14: a 1.5 mm cache in a HU window scaled to [0, 1] for 2.5 × 1.5 × 1.5 mm z-score
    plans; the tensors fit, the features do not. Exported only under --allow."""
    out = tmp_path / "x.pth"
    res = _export(cache_run, out)
    assert_refused(res, "pretrained otherwise than nnunet_plans.json:3d_fullres preprocesses",
                   "spacing: run ", "plans 2.5×1.5×1.5 mm",
                   "intensity normalisation: run HU window [",
                   "plans CTNormalization (clip [-950.0, 900.0])",
                   "--allow spacing,normalization")
    assert not out.exists()
    res = _export(cache_run, out, "--allow", "spacing", "--allow", "normalization")
    assert res.exit_code == 0, res.output
    assert "warning: exported under --allow although the spacing: run" in res.output
    res = _export(cache_run, tmp_path / "y.pth", "--allow", "spacing,colour")
    assert_refused(res, "--allow colour: not one of spacing, normalization, strides")


def test_export_refuses_plans_with_other_strides_and_equal_shapes(nnunet_run: Path,
                                                                  tmp_path: Path) -> None:
    """X15: every tensor has the shape the plans give, but stage 1 downsamples z as well."""
    plans = json.loads(PLANS.read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["strides"][1] = [2, 2, 2]
    other = tmp_path / "nnUNetPlans.json"
    other.write_text(json.dumps(plans))
    res = _export(nnunet_run, tmp_path / "x.pth", plans=other)
    assert_refused(res, "strides: run [[1, 1, 1], [1, 2, 2], [2, 4, 4], [4, 8, 8]], plans "
                        "[[1, 1, 1], [2, 2, 2], [4, 4, 4], [8, 8, 8]]", "--allow strides")
    assert _export(nnunet_run, tmp_path / "x.pth", "--allow", "strides",
                   plans=other).exit_code == 0


def test_export_never_replaces_a_file_it_did_not_write(nnunet_run: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """X06, X16 (a user's file; the run's own encoder), X07 (a folder), X12, X17."""
    mine = tmp_path / "USER_nnunet_checkpoint.pth"
    mine.write_text("precious")
    encoder = nnunet_run / "encoder.safetensors"
    before = encoder.read_bytes()
    for target in (mine, encoder):
        assert_refused(_export(nnunet_run, target), f"{target}: exists; pass --overwrite")
        assert_refused(_export(nnunet_run, target, "--overwrite"),
                       f"{target}: exists and is not a checkpoint written by `pimpic export "
                       "nnunet`; refusing to replace it, even with --overwrite")
    assert mine.read_text() == "precious" and encoder.read_bytes() == before
    assert_refused(_export(nnunet_run, tmp_path), f"{tmp_path}: is a folder; --out names "
                                                  "the checkpoint file")
    out = tmp_path / "x.pth"
    assert_refused(_export(nnunet_run, out, "--dataset-json", str(tmp_path / "none.json")),
                   f"{tmp_path / 'none.json'}: --dataset-json file not found")
    with monkeypatch.context() as m:  # a read-only folder (root ignores chmod)
        def refuse(suffix: str = "", prefix: str = "", dir: str = "") -> Any:
            raise PermissionError(errno.EACCES, "Permission denied", f"{dir}/{prefix}1{suffix}")

        m.setattr(tempfile, "mkstemp", refuse)
        assert_refused(_export(nnunet_run, out), f"error: {out}: permission denied")
    assert not out.exists()
    assert _export(nnunet_run, out).exit_code == 0
    assert _export(nnunet_run, out, "--overwrite").exit_code == 0  # an earlier export: replaced


def write_preprocessed(root: Path, n: int = 3, shape: tuple[int, int, int] = (20, 24, 24)
                       ) -> Path:
    """A tiny nnU-Net preprocessed dataset: blosc2 and npy cases, properties, plans."""
    import blosc2

    shutil.copy(PLANS, root / "nnUNetPlans.json")
    shutil.copy(DATA / "nnunet_dataset.json", root / "dataset.json")
    folder = root / "nnUNetPlans_3d_fullres"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        data = rng.standard_normal((1, *shape)).astype(np.float32)
        cid = f"case_{i}"
        if i % 2:
            np.save(folder / f"{cid}.npy", data)
        else:
            blosc2.asarray(np.ascontiguousarray(data), urlpath=str(folder / f"{cid}.b2nd"),
                           mode="w")
        np.save(folder / f"{cid}_seg.npy", np.zeros((1, *shape), np.int8))
        (folder / f"{cid}.pkl").write_bytes(pickle.dumps({"spacing": [2.5, 1.5, 1.5]}))
    return folder


def test_pretrain_on_an_nnunet_preprocessed_folder(tmp_path: Path) -> None:
    from pimpic.nnunet.data import PreprocessedFolder

    folder = write_preprocessed(tmp_path)
    source = PreprocessedFolder(folder)
    assert source.case_ids == ["case_0", "case_2", "case_1"]
    assert source.image("case_0").shape == (20, 24, 24)
    assert source.image("case_0")[2:4, 0:3, 5:6].shape == (2, 3, 1)
    assert source.settings["spacing"] == [2.5, 1.5, 1.5]
    assert source.settings["window"] == [-950.0, 900.0]
    run = tmp_path / "run"
    # no nnunet_plans: the folder's plans and configuration are used and recorded
    pretrain(folder, run, _cfg(nnunet_plans="", steps=1, checkpoint_every=1), progress=False)
    saved = read_json(run / "run.json")
    assert saved["case_ids"] == ["case_0", "case_2", "case_1"]
    cfg = load_yaml(run / "config.yaml")
    assert Path(cfg["nnunet_plans"]).name == "nnUNetPlans.json"
    assert cfg["nnunet_configuration"] == "3d_fullres"


@pytest.mark.parametrize("method", ["pimpic", "pim", "pic"])
def test_pretrain_box_patches_on_the_anisotropic_plan(method: str, tmp_path: Path) -> None:
    """A few steps of each overlap method on 8 × 16 × 16 crops of an nnU-Net folder, through
    the anisotropic 3d_fullres encoder (strides (1,1,1) … (4,8,8))."""
    folder = write_preprocessed(tmp_path, shape=(20, 40, 36))
    run = tmp_path / "run"
    pretrain(folder, run, _cfg(method=method, nnunet_plans="", patch_size=[8, 16, 16],
                               patches=6, steps=3, checkpoint_every=3), progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in rows)
    if method != "pim":
        assert all(r["pairs"] > 0 for r in rows)  # box patches overlap: PiC has pairs
    meta = read_encoder_metadata(run / "encoder.safetensors")
    assert meta["patch_size"] == [8, 16, 16]
    assert load_yaml(run / "config.yaml")["patch_size"] == [8, 16, 16]


def test_patch_size_plan_takes_the_plans_patch(tmp_path: Path) -> None:
    folder = write_preprocessed(tmp_path)
    run = tmp_path / "run"
    pretrain(folder, run, _cfg(nnunet_plans="", patch_size="plan", steps=1, checkpoint_every=1),
             progress=False)
    # the plan's [16, 32, 32] (the 20 × 24 × 24 cases are padded to it in-plane)
    assert load_yaml(run / "config.yaml")["patch_size"] == [16, 32, 32]
    assert read_encoder_metadata(run / "encoder.safetensors")["patch_size"] == [16, 32, 32]
    # resuming reads the resolved size back: same config, nothing to refuse
    pretrain(folder, run, _cfg(nnunet_plans="", patch_size="plan", steps=2,
                               checkpoint_every=1), resume=True, progress=False)
    with pytest.raises(PimpicError, match="patch_size plan: backbone nnunet: set nnunet_plans"):
        resolve_patch(_cfg(nnunet_plans="", patch_size="plan"))


def test_bench_pretrain_step_with_a_box_patch() -> None:
    res = runner.invoke(app, ["bench", "pretrain-step", "--backbone", "nnunet", "--plans",
                              str(PLANS), "--patch-size", "8,16,16", "--patches", "4",
                              "--steps", "1"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["patch_size"] == [8, 16, 16] and out["median_step_s"] > 0
    res = runner.invoke(app, ["bench", "pretrain-step", "--backbone", "nnunet", "--plans",
                              str(PLANS), "--patch-size", "plan", "--patches", "2",
                              "--steps", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["patch_size"] == [16, 32, 32]


def test_bench_pretrain_step_on_the_nnunet_backbone() -> None:
    res = runner.invoke(app, ["bench", "pretrain-step", "--backbone", "nnunet", "--patch-size",
                              "16", "--width", "2", "--patches", "4", "--steps", "1",
                              "--depth", "3"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["backbone"] == "nnunet" and out["median_step_s"] > 0
    assert out["speedup_vs_loop"] > 0 and out["encoder_parameters"] > 0
