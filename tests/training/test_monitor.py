"""Monitor: the metrics.jsonl rows of both loops, TensorBoard tags, resume, other ranks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from pimpic.io import read_jsonl
from pimpic.training import monitor as monitor_module
from pimpic.training.monitor import Monitor


class FakeWriter:
    """Stands in for TensorBoard's SummaryWriter: remembers what was logged."""

    made: ClassVar[list[FakeWriter]] = []

    def __init__(self, logdir: str, purge_step: int | None = None) -> None:
        self.purge_step = purge_step
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False
        FakeWriter.made.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def writers(monkeypatch: pytest.MonkeyPatch) -> list[FakeWriter]:
    FakeWriter.made = []
    monkeypatch.setattr(monitor_module, "SummaryWriter", FakeWriter)
    return FakeWriter.made


def test_pretraining_rows_and_tags(tmp_path: Path, writers: list[FakeWriter]) -> None:
    mon = Monitor(tmp_path, 0, 4, 2, desc="pretrain", tag="pretrain", patches_per_step=8,
                  progress=False)
    assert mon.update(1, {"loss": 1.0, "pim": 3.0}, 0.1) is None
    row = mon.update(2, {"loss": 2.0, "pim": 5.0}, 0.1)
    mon.update(3, {"loss": 4.0, "pim": 0.0}, 0.2)
    mon.update(4, {"loss": 6.0, "pim": 0.0}, 0.2)
    mon.close()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows[0] == row
    assert [list(r) for r in rows] == [["step", "loss", "pim", "lr", "patches_per_s",
                                        "elapsed_s"]] * 2
    assert [(r["step"], r["loss"], r["pim"], r["lr"]) for r in rows] == [(2, 1.5, 4.0, 0.1),
                                                                         (4, 5.0, 0.0, 0.2)]
    assert all(r["patches_per_s"] > 0 and r["elapsed_s"] > 0 for r in rows)
    (tb,) = writers
    assert tb.purge_step is None and tb.closed
    assert {t for t, _, s in tb.scalars if s == 2} == {"pretrain/loss", "pretrain/pim",
                                                      "pretrain/lr", "pretrain/patches_per_s",
                                                      "pretrain/elapsed_s"}


def test_finetuning_rows_context_and_own_rows(tmp_path: Path, writers: list[FakeWriter]) -> None:
    mon = Monitor(tmp_path, 0, 3, 2, desc="finetune", tag="train", progress=False)
    for step in (1, 2, 3):
        mon.update(step, {"loss": float(step)}, 0.01, epoch=1)
    epoch_row: dict[str, Any] = {"step": 3, "epoch": 1, "train_loss": 2.0,
                                 "frozen_encoder": False, "val_dice": float("nan"),
                                 "val_dice_loss": 0.5, "best_epoch": 1, "elapsed_s": 1.0}
    mon.log(epoch_row, 3)
    mon.close()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert list(rows[0]) == ["step", "epoch", "loss", "lr", "elapsed_s"]
    assert (rows[0]["step"], rows[0]["epoch"], rows[0]["loss"]) == (2, 1, 1.5)
    assert rows[1]["step"] == 3 and rows[1]["val_dice_loss"] == 0.5 and len(rows) == 2
    tags = {(t, s) for t, _, s in writers[0].scalars}
    assert tags == {("train/loss", 2), ("train/lr", 2), ("train/elapsed_s", 2),
                    ("train/loss", 3), ("val/dice_loss", 3)}  # NaN and non-scores left out

    (tmp_path / "quiet").mkdir()
    Monitor(tmp_path / "quiet", 0, 1, 1, desc="finetune", tag="train", progress=False,
            tensorboard=False).update(1, {"loss": 1.0}, 0.01, epoch=1)
    assert len(writers) == 1 and (tmp_path / "quiet" / "metrics.jsonl").is_file()


def test_resume_drops_later_rows_and_counts_earlier_time(tmp_path: Path,
                                                         writers: list[FakeWriter]) -> None:
    first = Monitor(tmp_path, 0, 6, 1, desc="pretrain", tag="pretrain", progress=False)
    for step in range(1, 7):
        first.update(step, {"loss": float(step)}, 0.1)
    first.close()
    # killed after step 6, resumed from the checkpoint at step 4
    again = Monitor(tmp_path, 4, 6, 1, desc="pretrain", tag="pretrain", progress=False,
                    elapsed_s=100.0)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    assert writers[1].purge_step == 5  # the event at step 4 belongs to the checkpoint
    row = again.update(5, {"loss": 50.0}, 0.1)
    assert row is not None and row["elapsed_s"] > 100.0 and row["loss"] == 50.0


def test_other_ranks_write_nothing(tmp_path: Path, writers: list[FakeWriter]) -> None:
    mon = Monitor(tmp_path, 0, 2, 1, desc="pretrain", tag="pretrain", enabled=False)
    assert mon.update(1, {"loss": 1.0}, 0.1) is None
    mon.log({"step": 1, "val_dice": 0.5}, 1)
    mon.close()
    assert mon.elapsed_s > 0 and not writers and not (tmp_path / "metrics.jsonl").exists()
