"""scripts/cohort_check.py: its ``--tumour FIELD=VALUE`` overrides of the tumour preset (the
measurement itself fine-tunes for minutes and is not in the suite)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from pimpic.data.synthetic_tumour import REALISTIC

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cohort_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("cohort_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tumour_overrides_replace_fields_and_turn_lists_into_tuples() -> None:
    style = _script()._tumour_style(REALISTIC, ["kidney_radius=[0.2, 0.45]", "rate=1.0",
                                                "kidney_exophytic=null"])
    assert style.kidney_radius == (0.2, 0.45) and style.rate == 1.0
    assert style.kidney_exophytic is None
    assert style.pancreas_radius == REALISTIC.pancreas_radius  # the rest is untouched


@pytest.mark.parametrize("bad", ["radius=0.3", "rate"])
def test_unknown_or_malformed_tumour_settings_are_refused_in_one_line(bad: str) -> None:
    res = subprocess.run([sys.executable, str(SCRIPT), "--tumour", bad], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0
    assert "--tumour" in res.stderr and repr(bad) in res.stderr and "kidney_radius" in res.stderr
