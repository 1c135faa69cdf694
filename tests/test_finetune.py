"""Fine-tuning: the loss falls, resume is bit-for-bit, the encoder hand-off, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pimpic.config import FinetuneConfig
from pimpic.data.cache import Cache
from pimpic.errors import PimpicError
from pimpic.finetune import finetune, load_model
from pimpic.finetune_data import train_transform
from pimpic.io import read_json, read_jsonl
from pimpic.models.export import save_encoder
from pimpic.models.unet import Encoder

TINY = FinetuneConfig(width=2, depth=3, patch_size=16, batch_size=1, samples_per_volume=2,
                      num_workers=0, log_every=1, lr=1e-2)


def _losses(run):
    return [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]


@pytest.mark.slow
def test_training_loss_falls(make_cache, tmp_path):
    cache = make_cache(n_cases=8, shape=(32, 32, 32))
    cfg = dataclasses.replace(TINY, augment=False, batch_size=2, steps_per_epoch=24,
                              max_epochs=1)
    run = finetune(cache, tmp_path / "run", cfg, progress=False, tensorboard=False)
    losses = _losses(run)
    assert len(losses) == 24
    assert np.mean(losses[-6:]) < np.mean(losses[:6]) - 0.05
    info = read_json(run / "run.json")
    assert info["completed"] and info["best_epoch"] == 1 and len(info["train_cases"]) == 5
    assert (run / "model.safetensors").is_file() and (run / "config.yaml").is_file()
    model, meta = load_model(run)
    assert meta["patch_size"] == 16 and meta["num_classes"] == 3
    assert model(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_resume_is_bit_for_bit(make_cache, tmp_path):
    cache = make_cache(n_cases=5, shape=(16, 16, 16))
    # the cosine horizon is max_steps, so stopping at 1 epoch and resuming changes only the cap
    cfg = dataclasses.replace(TINY, steps_per_epoch=2, max_epochs=2, max_steps=4,
                              lr_schedule="cosine")
    straight = finetune(cache, tmp_path / "a", cfg, progress=False, tensorboard=False)
    half = dataclasses.replace(cfg, max_epochs=1)
    split = finetune(cache, tmp_path / "b", half, progress=False, tensorboard=False)
    finetune(cache, split, cfg, resume=True, progress=False, tensorboard=False)
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(split / "checkpoint.pt", weights_only=True)
    assert a["state"]["step"] == b["state"]["step"] == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert _losses(straight) == _losses(split)
    # a finished run resumes to nothing; a changed experiment is refused
    finetune(cache, split, cfg, resume=True, progress=False, tensorboard=False)
    with pytest.raises(PimpicError, match="lr"):
        finetune(cache, split, dataclasses.replace(cfg, lr=0.5), resume=True, progress=False)


def test_pretrained_encoder_is_loaded_and_recorded(make_cache, tmp_path):
    cache = make_cache(n_cases=5, shape=(16, 16, 16))
    torch.manual_seed(3)
    enc = Encoder(1, 2, 3)
    path = tmp_path / "encoder.safetensors"
    save_encoder(path, enc, {"patch_size": 16, "spacing": [1.5] * 3, "window": [-200, 400],
                             "method": "pimpic", "steps": 1, "pretrain_cases": ["x"]})
    # lr 0: the kept model's encoder must be exactly the export (architecture from the file)
    cfg = dataclasses.replace(TINY, width=32, depth=5, lr=0.0, max_steps=1)
    run = finetune(cache, tmp_path / "run", cfg, encoder=path, progress=False,
                   tensorboard=False)
    state = load_file(str(run / "model.safetensors"))
    for k, v in enc.state_dict().items():
        assert torch.equal(state[f"encoder.{k}"], v)
    info = read_json(run / "run.json")
    assert info["encoder_meta"]["pretrain_cases"] == ["x"] and info["encoder"] == str(path)
    bad = dataclasses.replace(cfg, patch_size=32)
    with pytest.raises(PimpicError, match="patch_size: encoder has 16"):
        finetune(cache, tmp_path / "r2", bad, encoder=path, progress=False)
    assert not (tmp_path / "r2").exists()
    other = tmp_path / "other.safetensors"
    save_encoder(other, enc, {"patch_size": 16, "spacing": [1.0] * 3, "window": [-200, 400]})
    with pytest.raises(PimpicError, match="spacing"):
        finetune(cache, tmp_path / "r3", cfg, encoder=other, progress=False)
    finetune(cache, tmp_path / "r3", cfg, encoder=other, allow=["spacing"], progress=False,
             tensorboard=False)


def test_bad_input(make_cache, tmp_path, capsys):
    cache = make_cache(n_cases=5, shape=(16, 16, 16))
    with pytest.raises(PimpicError, match="patch_size 8"):
        finetune(cache, tmp_path / "p", dataclasses.replace(TINY, patch_size=8), progress=False)
    cfg = dataclasses.replace(TINY, width=2, fraction=5, max_steps=1)
    run = finetune(cache, tmp_path / "run", cfg, progress=False, tensorboard=False)
    assert "on 1 of 3 training cases (5%)" in capsys.readouterr().out
    with pytest.raises(PimpicError, match="exists and is not empty"):
        finetune(cache, run, cfg, progress=False)
    finetune(cache, run, cfg, overwrite=True, progress=False, tensorboard=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PimpicError, match=r"no model\.safetensors"):
        load_model(tmp_path / "empty")
    with pytest.raises(PimpicError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    unlabelled = make_cache(n_cases=5, shape=(16, 16, 16), labelled=False)
    with pytest.raises(PimpicError, match="has no label"):
        finetune(unlabelled, tmp_path / "u", cfg, progress=False)


def test_augmented_crops_have_patch_shape_and_valid_labels(make_cache):
    cache = Cache(make_cache(n_cases=3, shape=(12, 20, 24)))
    cid = cache.case_ids[0]
    data = {"image": torch.from_numpy(np.asarray(cache.image(cid), np.float32)[None]),
            "label": torch.from_numpy(np.asarray(cache.label(cid), np.int64)[None])}
    t = train_transform(dataclasses.replace(TINY, samples_per_volume=3), 16)
    t.set_random_state(seed=0)
    out = t(data)
    assert len(out) == 3
    for item in out:
        assert item["image"].shape == item["label"].shape == (1, 16, 16, 16)
        assert set(torch.unique(item["label"]).tolist()) <= {0, 1, 2}


def test_frozen_encoder_and_dicece(make_cache, tmp_path):
    cache = make_cache(n_cases=5, shape=(16, 16, 16))
    cfg = dataclasses.replace(TINY, loss="dicece", freeze_encoder_epochs=1, max_steps=2,
                              val_criterion="dice_loss")
    torch.manual_seed(cfg.seed)
    init = Encoder(1, cfg.width, cfg.depth).state_dict()  # build_model seeds identically
    run = finetune(cache, tmp_path / "run", cfg, progress=False, tensorboard=False)
    state = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    for k, v in init.items():
        assert torch.equal(state[f"encoder.{k}"], v), k
    assert read_json(run / "run.json")["best_score"] > 0  # a Dice loss, lower is better
