"""``pimpic bench finetune-step`` runs end to end on a tiny cache and reports every number."""

from __future__ import annotations

from typer.testing import CliRunner

from pimpic.benchmarks.finetune_step import VALIDATION, format_result, run
from pimpic.cli import app


def test_bench_finetune_step_reports_every_variant(make_cache) -> None:
    cache = make_cache(n_cases=6, shape=(16, 16, 16))
    result = run(cache, width=2, depth=3, patch_size=16, repeats=1, val_cases=1)
    assert set(result["step_s"]) == {"fp32", "channels_last", "bf16 autocast"}
    assert set(result["validation_per_case_s"]) == set(VALIDATION)
    values = [result["data_batch_s"], *result["step_s"].values(),
              *result["validation_per_case_s"].values()]
    assert all(v > 0 for v in values)
    assert "validation: released" in format_result(result)


def test_bench_finetune_step_refuses_a_cache_without_validation_cases(make_cache) -> None:
    cache = make_cache(n_cases=3, shape=(16, 16, 16))  # 2 train, 0 val, 1 test
    res = CliRunner().invoke(app, ["bench", "finetune-step", str(cache), "--width", "2",
                                   "--depth", "3", "--patch-size", "16", "--repeats", "1"])
    assert res.exit_code != 0 and "training and validation cases" in res.output
