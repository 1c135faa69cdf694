"""The divergence guard (fine-tuning; pretraining's is in test_engine.py) and the weight check
of every loaded file: a NaN stops the run in one line with its last good checkpoint kept, and
no file with NaN, Inf or integer weights is ever used."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from pimpic.errors import PimpicError
from pimpic.io import read_json
from pimpic.models.export import save_encoder
from pimpic.models.unet import Encoder
from pimpic.segmentation import finetune as finetune_module
from pimpic.segmentation.config import FinetuneConfig
from pimpic.segmentation.finetune import finetune
from pimpic.segmentation.model_file import load_model
from pimpic.training.guard import TrainingDiverged, check_finite, step_values

TINY = FinetuneConfig(width=2, depth=3, patch_size=16, batch_size=1, samples_per_volume=2,
                      num_workers=0, log_every=1, lr=1e-2, steps_per_epoch=2, max_epochs=3)
META = {"patch_size": 16, "spacing": [1.5] * 3, "window": [-200, 400]}


class _NanAt(nn.Module):
    """The training loss, NaN at its ``at``-th call (1-based)."""

    def __init__(self, inner: nn.Module, at: int) -> None:
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss: torch.Tensor = self.inner(logits, target)
        return loss * math.nan if self.calls == self.at else loss


def _rewrite(path: Path, change: Any) -> None:
    """Rewrite a safetensors file with ``change(state)``, keeping its header's metadata."""
    with safe_open(str(path), framework="pt") as fh:
        header = fh.metadata()
    state = load_file(str(path))
    change(state)
    save_file(state, str(path), metadata=header)


def _inject_nan(monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    real = finetune_module.segmentation_loss
    monkeypatch.setattr(finetune_module, "segmentation_loss",
                        lambda cfg: _NanAt(real(cfg), at))


def test_step_values_reads_terms_and_gradient_norm() -> None:
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    loss = (w * torch.tensor([1.0, 1.0])).sum()
    loss.backward()
    values = step_values({"loss": loss}, [w, nn.Parameter(torch.zeros(1))])  # one without grad
    assert values == {"loss": 7.0, "grad_norm": pytest.approx(math.sqrt(2))}
    check_finite(values, run=Path("r"), step=1, last_good=None, precision=("amp",))
    w.grad = torch.tensor([math.inf, 0.0])
    bad = step_values({"loss": loss}, [w])
    with pytest.raises(TrainingDiverged, match=r"^r: training diverged at step 5, not finite: "
                                               r"grad_norm=inf; stopped, no checkpoint had been "
                                               r"written yet; try `--set amp=false` or a lower "
                                               r"`lr`, then `--resume`$"):
        check_finite(bad, run=Path("r"), step=5, last_good=None, precision=("amp",))


def test_finetune_nan_stops_keeps_last_good_checkpoint_and_resumes(
        make_cache: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = make_cache(n_cases=5, shape=(16, 16, 16))
    run = tmp_path / "run"
    _inject_nan(monkeypatch, at=4)  # epoch 2's second step
    with pytest.raises(TrainingDiverged) as err:
        finetune(cache, run, TINY, progress=False, tensorboard=False)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{run}: training diverged at step 4, not finite: loss=nan")
    assert "grad_norm=nan" in message
    assert "`--set cpu_bf16=false`, `--set amp=false` or a lower `lr`, then `--resume`" in message
    state = torch.load(run / "checkpoint.pt", weights_only=True)["state"]
    assert state["epoch"] == 1 and state["step"] < 4
    assert f"last good checkpoint (epoch 1, step {state['step']}) is kept" in message
    info = read_json(run / "run.json")
    assert info["completed"] is False and info["steps"] == state["step"]
    # the model kept is epoch 1's, finite; no weight update ever saw the NaN gradient
    assert all(torch.isfinite(t).all() for t in load_file(str(run / "model.safetensors")).values())
    monkeypatch.undo()
    finetune(cache, run, TINY, resume=True, progress=False, tensorboard=False)
    info = read_json(run / "run.json")
    assert info["completed"] and info["epochs"] == 3


def test_finetune_nan_on_the_first_step_says_no_checkpoint(
        make_cache: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = make_cache(n_cases=5, shape=(16, 16, 16))
    _inject_nan(monkeypatch, at=1)
    with pytest.raises(TrainingDiverged, match=r"step 1, not finite: loss=nan.*no checkpoint had "
                                               r"been written yet"):
        finetune(cache, tmp_path / "run", TINY, progress=False, tensorboard=False)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_huge_learning_rate_is_stopped_not_saved(make_cache: Any, tmp_path: Path) -> None:
    """Issue #23 D22: ``--set lr=1e30`` used to exit 0 with an all-NaN model."""
    cache = make_cache(n_cases=5, shape=(16, 16, 16))
    cfg = dataclasses.replace(TINY, lr=1e30, steps_per_epoch=4, max_epochs=2)
    with pytest.raises(TrainingDiverged, match="training diverged at step"):
        finetune(cache, tmp_path / "run", cfg, progress=False, tensorboard=False)


@pytest.mark.parametrize(("spoil", "message"), [
    (lambda t: t.fill_(math.nan), "holds NaN or Inf"),
    (lambda t: t.fill_(math.inf), "holds NaN or Inf"),
    (lambda t: t.to(torch.int32), "is int32, not floating point"),
])
def test_encoder_with_bad_weights_is_refused(make_cache: Any, tmp_path: Path, spoil: Any,
                                             message: str) -> None:
    """Issue #23 D05/D08: an int32-truncated or NaN encoder was accepted."""
    cache = make_cache(n_cases=5, shape=(16, 16, 16))
    path = tmp_path / "encoder.safetensors"
    save_encoder(path, Encoder(1, 2, 3), META)
    first = sorted(load_file(str(path)))[0]
    _rewrite(path, lambda state: state.update({first: spoil(state[first].clone())}))
    with pytest.raises(PimpicError, match=rf"encoder\.safetensors: tensor '{first}' {message}"):
        finetune(cache, tmp_path / "run", TINY, encoder=path, progress=False)
    assert not (tmp_path / "run").exists()


def test_model_file_with_nan_weights_is_refused(make_cache: Any, tmp_path: Path) -> None:
    """Issue #23 D21: evaluating an all-NaN model printed a Dice-0 table."""
    cache = make_cache(n_cases=5, shape=(16, 16, 16))
    run = finetune(cache, tmp_path / "run", dataclasses.replace(TINY, max_epochs=1),
                   progress=False, tensorboard=False)
    _rewrite(run / "model.safetensors",
             lambda state: [v.fill_(math.nan) for v in state.values()])
    with pytest.raises(PimpicError, match=r"model\.safetensors: tensor '.*' holds NaN or Inf"):
        load_model(run)


def test_model_file_with_the_earlier_1x1x1_head_still_loads(make_cache: Any,
                                                            tmp_path: Path) -> None:
    """Files written before the released head became 3×3×3 keep their own head."""
    cache = make_cache(n_cases=5, shape=(16, 16, 16))
    run = finetune(cache, tmp_path / "run", dataclasses.replace(TINY, max_epochs=1),
                   progress=False, tensorboard=False)
    assert load_file(str(run / "model.safetensors"))["decoder.head.weight"].shape[-3:] == (3, 3, 3)

    def centre(state: dict[str, torch.Tensor]) -> None:
        state["decoder.head.weight"] = state["decoder.head.weight"][..., 1:2, 1:2, 1:2].clone()

    _rewrite(run / "model.safetensors", centre)
    model, _ = load_model(run)
    assert model.decoder.head.kernel_size == (1, 1, 1)
    assert model(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
