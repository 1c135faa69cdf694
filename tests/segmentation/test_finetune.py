"""Fine-tuning: the loss falls, resume is bit-for-bit, the encoder hand-off, bad input."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pimpic.data.cache import Cache
from pimpic.errors import PimpicError
from pimpic.io import read_json, read_jsonl
from pimpic.models.export import save_encoder
from pimpic.models.unet import Encoder
from pimpic.segmentation.config import FinetuneConfig
from pimpic.segmentation.finetune import finetune
from pimpic.segmentation.finetune_data import train_transform
from pimpic.segmentation.model_file import load_model

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
    assert meta.patch_size == 16 and meta.num_classes == 3
    assert model(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


class OneJouleMeter:
    """An energy meter measuring one joule and one second per session."""

    def __init__(self, device):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def result(self):
        return {"joules": 1.0, "kwh": 1 / 3.6e6, "seconds": 1.0, "source": "estimate",
                "note": "test"}


def test_resume_is_bit_for_bit(make_cache, tmp_path, monkeypatch):
    monkeypatch.setattr("pimpic.segmentation.finetune.EnergyMeter", OneJouleMeter)
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
    rows = read_jsonl(split / "metrics.jsonl")
    assert [list(r) for r in rows if "loss" in r] == [["step", "epoch", "loss", "lr",
                                                       "elapsed_s"]] * 4
    assert [r["step"] for r in rows] == [1, 2, 2, 3, 4, 4]  # steps, epoch rows after each
    assert read_json(split / "energy.json")["joules"] == 2.0  # both sessions
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


def test_bad_input(make_cache, tmp_path, caplog):
    cache = make_cache(n_cases=5, shape=(16, 16, 16))
    with pytest.raises(PimpicError, match="patch_size 8"):
        finetune(cache, tmp_path / "p", dataclasses.replace(TINY, patch_size=8), progress=False)
    cfg = dataclasses.replace(TINY, width=2, fraction=5, max_steps=1)
    with caplog.at_level(logging.INFO, logger="pimpic"):
        run = finetune(cache, tmp_path / "run", cfg, progress=False, tensorboard=False)
    assert "on 1 of 3 training cases (5%)" in caplog.text
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


# ------------------------------------------------------------------- run folder and resume

SHORT = dataclasses.replace(TINY, samples_per_volume=1, steps_per_epoch=1, max_epochs=2)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """(cache, encoder, run) of a finished 2-epoch run from an exported encoder."""
    from conftest import write_cache

    root = tmp_path_factory.mktemp("ft")
    cache = write_cache(root / "cache", n_cases=5, shape=(16, 16, 16))
    torch.manual_seed(1)
    encoder = root / "encoder.safetensors"
    save_encoder(encoder, Encoder(1, 2, 3), {"patch_size": 16, "spacing": [1.5] * 3,
                                             "window": [-200, 400]})
    run = finetune(cache, root / "run", SHORT, encoder=encoder, progress=False,
                   tensorboard=False)
    return cache, encoder, run


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst, symlinks=True)
    return dst


def _names(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_overwrite_refuses_a_folder_that_is_not_a_run(done, tmp_path):
    cache, encoder, _ = done
    mine = tmp_path / "mine"
    (mine / "tb").mkdir(parents=True)
    (mine / "eval-test").mkdir()
    for name in ("config.yaml", "run.json", "tb/notes", "eval-test/my_results.csv"):
        (mine / name).write_text("user data")
    with pytest.raises(PimpicError, match="not a pimpic run folder"):
        finetune(cache, mine, SHORT, encoder=encoder, overwrite=True, progress=False)
    assert _names(mine) == ["config.yaml", "eval-test", "eval-test/my_results.csv", "run.json",
                            "tb", "tb/notes"]


def test_overwrite_with_an_eval_file_refuses_before_deleting(done, tmp_path):
    cache, encoder, run = done
    run = _copy(run, tmp_path / "run")
    (run / "eval-notes").write_text("an eval-* file, not an evaluation folder")
    before = _names(run)
    with pytest.raises(PimpicError, match=r"removes only what pimpic wrote.*eval-notes"):
        finetune(cache, run, SHORT, encoder=encoder, overwrite=True, progress=False)
    assert _names(run) == before
    (run / "eval-notes").unlink()
    from pimpic.training.run_folder import mark_evaluation

    mark_evaluation(run / "eval-test")
    finetune(cache, run, SHORT, encoder=encoder, overwrite=True, progress=False,
             tensorboard=False)
    assert not (run / "eval-test").exists() and (run / "model.safetensors").is_file()


def test_resume_without_a_checkpoint_refuses(done, tmp_path):
    cache, encoder, _ = done
    with pytest.raises(PimpicError, match="no checkpoint to resume from"):
        finetune(cache, tmp_path / "new", SHORT, encoder=encoder, resume=True, progress=False)
    assert not (tmp_path / "new").exists()


def test_resume_compares_cache_cases_and_encoder(done, tmp_path):
    from pimpic.io import write_json

    _, encoder, _ = done
    longer = dataclasses.replace(SHORT, max_epochs=3)
    # the encoder file changed (same path, other weights)
    other = _copy(encoder.parent, tmp_path / "root")
    torch.manual_seed(2)
    save_encoder(other / "encoder.safetensors", Encoder(1, 2, 3),
                 {"patch_size": 16, "spacing": [1.5] * 3, "window": [-200, 400]})
    with pytest.raises(PimpicError, match=r"cannot resume — encoder_sha256: run has '[0-9a-f]"):
        finetune(other / "cache", other / "run", longer, encoder=other / "encoder.safetensors",
                 resume=True, progress=False)
    with pytest.raises(PimpicError, match=r"encoder_sha256: run has '[0-9a-f].*now None"):
        finetune(other / "cache", other / "run", longer, resume=True, progress=False)
    # the validation cases changed
    splits = read_json(other / "cache" / "splits.json")
    write_json(other / "cache" / "splits.json",
               {**splits, "val": [splits["test"][0]], "test": splits["test"][1:]})
    with pytest.raises(PimpicError, match=r"cannot resume — val_cases\[0\]"):
        finetune(other / "cache", other / "run", longer, encoder=encoder, resume=True,
                 progress=False)
    write_json(other / "cache" / "splits.json", splits)
    # the cache was prepared again with other settings
    manifest = read_json(other / "cache" / "manifest.json")
    write_json(other / "cache" / "manifest.json",
               {**manifest, "settings": {**manifest["settings"], "crop_foreground": True}})
    with pytest.raises(PimpicError, match=r"cannot resume — settings\.crop_foreground"):
        finetune(other / "cache", other / "run", longer, encoder=encoder, resume=True,
                 progress=False)
    write_json(other / "cache" / "manifest.json", {**manifest, "source": "elsewhere"})
    with pytest.raises(PimpicError, match=r"cannot resume — cache_manifest_sha256"):
        finetune(other / "cache", other / "run", longer, encoder=encoder, resume=True,
                 progress=False)
    assert read_json(other / "run" / "run.json")["epochs"] == 2  # nothing was resumed


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 torn zip", "foreign", "no-state"])
def test_a_corrupt_checkpoint_is_one_line(done, tmp_path, content):
    cache, encoder, run = done
    run = _copy(run, tmp_path / "run")
    ckpt = run / "checkpoint.pt"
    if content == "foreign":
        torch.save({"model": {}, "optimizer": {}, "scheduler": {}, "state": {}, "x": Path(".")},
                   ckpt)
    elif content == "no-state":
        saved = torch.load(ckpt, weights_only=True)
        torch.save({**saved, "state": {"epoch": 1}}, ckpt)
    else:
        ckpt.write_bytes(content)
    longer = dataclasses.replace(SHORT, max_epochs=3)
    with pytest.raises(PimpicError) as err:
        finetune(cache, run, longer, encoder=encoder, resume=True, progress=False,
                 tensorboard=False)
    msg = str(err.value)
    assert msg.startswith(str(ckpt)) and "\n" not in msg and "weights_only" not in msg


def test_resume_of_a_finished_run_completes_run_json(done, tmp_path):
    """A kill between the last checkpoint and run.json must not leave the run unfinished."""
    from pimpic.io import write_json

    cache, encoder, run = done
    run = _copy(run, tmp_path / "run")
    info = read_json(run / "run.json")
    write_json(run / "run.json", {**info, "completed": False, "epochs": 1, "stop_reason": None})
    finetune(cache, run, SHORT, encoder=encoder, resume=True, progress=False, tensorboard=False)
    after = read_json(run / "run.json")
    assert after["completed"] and after["epochs"] == 2 and after["stop_reason"]


def test_labels_beyond_num_classes_are_refused_before_the_folder(done, tmp_path):
    cache, encoder, _ = done
    with pytest.raises(PimpicError, match=r"label value 2 does not fit num_classes=2"):
        finetune(cache, tmp_path / "run", dataclasses.replace(SHORT, num_classes=2),
                 encoder=encoder, progress=False)
    assert not (tmp_path / "run").exists()
