"""The fine-tuning protocol: the released recipe's network, data and augmentation, foreground
cropping, and same command + same seed = same bytes (docs/method.md §6.2)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.transforms import (
    CropForegroundd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandGaussianNoised,
)
from safetensors.torch import load_file

from pimpic.models.unet import Encoder, SegmentationNet
from pimpic.segmentation.config import FinetuneConfig
from pimpic.segmentation.finetune import finetune
from pimpic.segmentation.finetune_data import train_transform
from pimpic.segmentation.inference import foreground_box, predict_labels

TINY = FinetuneConfig(width=2, depth=3, patch_size=16, batch_size=1, samples_per_volume=2,
                      num_workers=0, log_every=1, lr=1e-2)


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_network_decoder_has_the_released_parameter_count() -> None:
    cfg = FinetuneConfig()  # the paper configuration: K = 32, depth 5, released decoder
    # 3 classes: the pancreas data set's background, organ, tumour (the labels decide it)
    net = SegmentationNet(Encoder(1, cfg.width, cfg.depth), 3, cfg.decoder)
    assert round(_n_params(net.decoder) / 1e6, 1) == 21.3
    assert _n_params(net.decoder) == 21_293_603  # the released 3×3×3 head, padding 1
    assert [b.conv1[0].out_channels for b in net.decoder.up_blocks] == [256, 128, 64, 32, 32]
    assert net.decoder.head.kernel_size == (3, 3, 3) and net.decoder.head.padding == (1, 1, 1)
    assert net.decoder.align_corners
    sym = SegmentationNet(Encoder(1, 32, 5), 3, "symmetric")
    assert round(_n_params(sym.decoder) / 1e6, 1) == 47.1
    x = torch.zeros(1, 1, 32, 32, 32)
    small = SegmentationNet(Encoder(1, 2, 4), 3)  # shallower networks keep the last widths
    assert small(x).shape == (1, 3, 32, 32, 32)


def test_released_transform_chain_and_batch() -> None:
    cfg = FinetuneConfig()
    chain = train_transform(cfg, cfg.patch_size).transforms
    kinds = [type(t) for t in chain]
    # foreground crop → whole-volume affine and noise → 16 pos/neg crops
    assert kinds[:4] == [CropForegroundd, RandAffined, RandGaussianNoised,
                         RandCropByPosNegLabeld]
    affine, noise, crop = chain[1], chain[2], chain[3]
    assert affine.prob == pytest.approx(0.1) and noise.prob == pytest.approx(0.2)
    assert noise.rand_gaussian_noise.std == pytest.approx(0.01)
    assert crop.cropper.num_samples == 16 and crop.cropper.image_threshold == 0.0
    assert cfg.batch_size * cfg.samples_per_volume == 32
    params = affine.rand_affine.rand_affine_grid
    assert params.rotate_range == (0.1,) * 3 and params.translate_range == (0.0,) * 3


def _body_volume(rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """A 48³ volume: air (0) everywhere but a 20³ body block holding a small organ."""
    image = np.zeros((1, 48, 48, 48), np.float32)
    image[:, 4:24, 4:24, 4:24] = 0.3 + 0.05 * rng.random((20, 20, 20))
    label = np.zeros_like(image, dtype=np.int64)
    label[:, 10:14, 10:14, 10:14] = 1
    return {"image": torch.from_numpy(image), "label": torch.from_numpy(label)}


@pytest.mark.parametrize("crop_foreground", [True, False])
def test_negative_crops_lie_inside_the_body(crop_foreground: bool) -> None:
    """Released rule: background crops are centred on image > 0, never in the air."""
    cfg = dataclasses.replace(FinetuneConfig(), patch_size=8, augment=False, pos_ratio=1.0,
                              samples_per_volume=64, crop_foreground=crop_foreground)
    transform = train_transform(cfg, cfg.patch_size)
    transform.set_random_state(seed=0)
    crops = transform(_body_volume(np.random.default_rng(0)))
    centre = [float(c["image"][0, 4, 4, 4]) for c in crops]
    in_air = sum(v == 0 for v in centre)
    if crop_foreground:
        assert in_air == 0
    else:
        assert in_air > 0  # 20³ body in a 48³ volume: many background centres are air


def test_foreground_box_and_cropped_prediction() -> None:
    image = np.zeros((40, 36, 32), np.float32)
    image[5:30, 8:20, 2:31] = 0.5
    assert foreground_box(image) == (slice(5, 30), slice(8, 20), slice(2, 31))
    assert foreground_box(np.zeros((4, 4, 4))) == (slice(None),) * 3
    torch.manual_seed(0)
    net = SegmentationNet(Encoder(1, 2, 3), 3).eval()
    labels = predict_labels(net, image, 16, crop_foreground=True)
    assert labels.shape == image.shape and labels.dtype == np.uint8
    outside = np.ones(image.shape, bool)
    outside[foreground_box(image)] = False
    assert not labels[outside].any()


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


@pytest.mark.slow
def test_same_command_same_seed_same_bytes(make_cache, tmp_path: Path) -> None:
    """Two identical fine-tuning runs give equal weights and byte-identical model files (no
    paths or times in the file: those live in run.json)."""
    cache = make_cache(n_cases=6, shape=(24, 24, 24))
    cfg = dataclasses.replace(TINY, steps_per_epoch=3, max_epochs=2, affine_prob=1.0,
                              noise_prob=1.0, intensity_aug=True)
    a = finetune(cache, tmp_path / "a", cfg, progress=False, tensorboard=False)
    b = finetune(cache, tmp_path / "b", cfg, progress=False, tensorboard=False)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    # a different seed is a different run (the test can tell runs apart)
    c = finetune(cache, tmp_path / "c", dataclasses.replace(cfg, seed=1), progress=False,
                 tensorboard=False)
    assert any(not torch.equal(wa[k], _weights(c)[k]) for k in wa)


def test_safetensors_files_are_reproducible(tmp_path: Path) -> None:
    """The library orders ``__metadata__`` keys at random; ours are sorted, so equal saves are
    equal bytes, and the file still reads back with every tensor and key."""
    from safetensors import safe_open

    from pimpic.io import save_safetensors

    state = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4, dtype=torch.int64)}
    meta = {f"key{i}": f"value {i}" for i in range(8)}
    blobs = set()
    for i in range(6):
        save_safetensors(state, tmp_path / f"{i}.safetensors", meta)
        blobs.add((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(blobs) == 1
    back = load_file(str(tmp_path / "0.safetensors"))
    assert all(torch.equal(back[k], v) for k, v in state.items())
    with safe_open(str(tmp_path / "0.safetensors"), framework="pt") as fh:
        assert fh.metadata() == meta


@pytest.mark.slow
def test_same_experiment_twice_gives_identical_results(make_cache, tmp_path: Path) -> None:
    """A real (tiny) experiment — pretraining, fine-tuning, evaluation — run twice into two
    folders: results.csv, table.md and every weight file are byte-identical."""
    from pimpic.pretraining.config import PretrainConfig
    from pimpic.protocol.experiment import run_experiment
    from pimpic.protocol.grid import ExperimentConfig
    from pimpic.protocol.report import write_all

    cache = make_cache(n_cases=6, shape=(24, 24, 24))
    cfg = ExperimentConfig(
        cache=str(cache), methods=("random", "pimpic"), fractions=(100,), seeds=(0,),
        pretrain=PretrainConfig(width=2, depth=3, patch_size=16, patches=4, proj_dim=8,
                                steps=3, num_workers=0, checkpoint_every=2, log_every=1),
        finetune=dataclasses.replace(TINY, steps_per_epoch=2, max_epochs=2))
    outs = []
    for name in ("a", "b"):
        exp = run_experiment(cfg, tmp_path / name, progress=False, on_stage=None, report=False)
        write_all(exp, cfg)
        outs.append(exp)
    a, b = outs
    for rel in ("results.csv", "table.md", "pretrain/pimpic/encoder.safetensors",
                "finetune/pimpic/f100/s0/model.safetensors",
                "finetune/random/f100/s0/model.safetensors"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert len((a / "results.csv").read_text().splitlines()) > 1


def test_layout_and_cpu_bf16_options(make_cache, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """channels-last (default) is recorded in the model file and used again at inference;
    ``cpu_bf16`` asks for bf16 autocast in training and in inference (validation) and is
    recorded for inference.

    The autocast is recorded here, not run: what bf16 kernels compute is the CPU's business —
    on some AMD CPUs a first step already overflows (docs/reproducibility.md), which the
    divergence guard stops — so the default suite does not depend on it."""
    import contextlib

    from pimpic.io import read_jsonl
    from pimpic.segmentation import finetune as finetune_module
    from pimpic.segmentation import inference
    from pimpic.segmentation.model_file import load_model

    asked: list[tuple[str, bool]] = []

    def recorded(where: str) -> Any:
        def autocast(device: torch.device, enabled: bool = True,
                     cpu_bf16: bool = False) -> contextlib.AbstractContextManager[None]:
            asked.append((where, cpu_bf16 and device.type == "cpu"))
            return contextlib.nullcontext()
        return autocast

    monkeypatch.setattr(finetune_module, "autocast", recorded("train"))
    monkeypatch.setattr(inference, "autocast", recorded("infer"))
    cache = make_cache(n_cases=5, shape=(16, 16, 16))
    cfg = dataclasses.replace(TINY, steps_per_epoch=2, max_epochs=1, cpu_bf16=True)
    run = finetune(cache, tmp_path / "run", cfg, progress=False, tensorboard=False)
    assert {w for w, bf16 in asked if bf16} == {"train", "infer"} and all(b for _, b in asked)
    model, info = load_model(run)
    assert info.inference.channels_last and info.inference.cpu_bf16
    weight = model.encoder.blocks[0].conv1[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert all(np.isfinite(r["loss"]) for r in read_jsonl(run / "metrics.jsonl") if "loss" in r)
    asked.clear()
    plain = finetune(cache, tmp_path / "plain", dataclasses.replace(cfg, channels_last=False,
                                                                    cpu_bf16=False),
                     progress=False, tensorboard=False)
    assert asked and not any(b for _, b in asked)
    model, info = load_model(plain)
    assert model.encoder.blocks[0].conv1[0].weight.is_contiguous()
    assert not info.inference.cpu_bf16


def test_batch_dice_does_not_punish_a_structure_absent_from_a_crop() -> None:
    """Per-crop Dice scores a crop without tumour and one false-positive tumour voxel as a total
    miss (loss 1 for that class); batch Dice pools the crops, so the same prediction costs little
    beside a crop whose tumour is found."""
    from pimpic.segmentation.finetune import segmentation_loss

    label = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    label[:, :, 2:6, 2:6, 2:6] = 1
    label[0, :, 3:5, 3:5, 3:5] = 2  # tumour only in crop 0
    pred = label.clone()
    pred[1, 0, 4, 4, 4] = 2  # one false-positive tumour voxel in crop 1
    logits = 20.0 * torch.nn.functional.one_hot(pred[:, 0], 3).permute(0, 4, 1, 2, 3).float()
    losses = {}
    for batch in (False, True):
        cfg = FinetuneConfig(num_classes=3, loss="dice", dice_batch=batch)
        losses[batch] = float(segmentation_loss(cfg)(logits, label))
    # per crop: tumour Dice of crop 1 is 0 → the class mean alone adds ≈ 1/3 / 2 to the loss
    assert losses[False] > 0.15
    assert losses[True] < 0.05


def test_class_ratios_centre_crops_on_each_class() -> None:
    """``class_ratios`` (nnU-Net-style class oversampling): a tiny tumour gets its share of crop
    centres; with the released positive/negative rule it gets a share ∝ its voxel count."""
    image = np.zeros((1, 40, 40, 40), np.float32)
    image[:, 4:36, 4:36, 4:36] = 0.5
    label = np.zeros((1, 40, 40, 40), np.int64)
    label[:, 8:32, 8:32, 8:32] = 1
    label[:, 18:20, 18:20, 18:20] = 2  # 8 of 13,824 foreground voxels
    item = {"image": torch.from_numpy(image), "label": torch.from_numpy(label)}
    shares = {}
    for ratios in (None, (1.0, 1.0, 1.0)):
        cfg = FinetuneConfig(patch_size=3, augment=False, samples_per_volume=300, num_classes=3,
                             class_ratios=ratios)
        transform = train_transform(cfg, cfg.patch_size)
        transform.set_random_state(seed=0)
        centres = [int(c["label"][0, 1, 1, 1]) for c in transform(dict(item))]
        shares[ratios] = [centres.count(k) / len(centres) for k in range(3)]
    assert shares[None][2] < 0.02
    assert all(abs(s - 1 / 3) < 0.1 for s in shares[(1.0, 1.0, 1.0)])
    with pytest.raises(ValueError, match="class_ratios"):
        FinetuneConfig(num_classes=3, class_ratios=(1.0, 1.0))


def test_encoder_lr_moves_the_encoder_at_its_own_rate(make_cache, tmp_path: Path) -> None:
    """``encoder_lr=0`` keeps the (pretrained or random) encoder exactly as it started while
    the decoder trains; the default trains both at ``lr``."""
    cache = make_cache(n_cases=6, shape=(24, 24, 24))
    cfg = dataclasses.replace(TINY, max_steps=3, steps_per_epoch=3, max_epochs=1, val_every=1,
                              encoder_lr=0.0)
    run = finetune(cache, tmp_path / "frozen", cfg, progress=False)
    start = finetune(cache, tmp_path / "start",
                     dataclasses.replace(cfg, max_steps=1, lr=0.0, encoder_lr=None),
                     progress=False)
    trained, started = (load_file(str(r / "model.safetensors")) for r in (run, start))
    enc = [k for k in trained if k.startswith("encoder.")]
    dec = [k for k in trained if k.startswith("decoder.")]
    assert enc and dec
    assert all(torch.equal(trained[k], started[k]) for k in enc)
    assert not all(torch.equal(trained[k], started[k]) for k in dec)
