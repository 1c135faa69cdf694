"""scripts/cohort_check.py: its ``--tumour FIELD=VALUE`` overrides of the tumour preset (the
measurement itself fine-tunes for minutes and is not in the suite)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from _scripts import SCRIPTS, load_script
from pimpic.data.synthetic_tumour import REALISTIC

SCRIPT = SCRIPTS / "cohort_check.py"


def test_tumour_overrides_replace_fields_and_turn_lists_into_tuples() -> None:
    style = load_script("cohort_check")._tumour_style(
        REALISTIC, ["kidney_radius=[0.2, 0.45]", "rate=1.0", "kidney_exophytic=null"])
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
