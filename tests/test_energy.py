"""EnergyMeter: the labelled CPU estimate, RAPL wrap-around; a run's energy.json over sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

from pimpic import energy
from pimpic.energy import EnergyMeter
from pimpic.io import read_json


def test_cpu_estimate_is_labelled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(energy, "RAPL_ROOT", tmp_path / "no-rapl")
    meter = EnergyMeter("cpu")
    with pytest.raises(RuntimeError):
        meter.result()
    with meter:
        sum(i * i for i in range(200_000))
    r = meter.result()
    assert set(r) == {"joules", "kwh", "seconds", "source", "note"}
    assert r["source"] == "estimate" and "W per busy core" in r["note"]
    assert r["joules"] > 0 and r["seconds"] > 0
    assert r["kwh"] == pytest.approx(r["joules"] / 3.6e6)


def _zone(root: Path, name: str, energy_uj: int, max_uj: int) -> Path:
    z = root / name
    z.mkdir(parents=True)
    (z / "energy_uj").write_text(str(energy_uj))
    (z / "max_energy_range_uj").write_text(str(max_uj))
    return z


def test_rapl_counts_packages_and_wrap_around(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    pkg0 = _zone(tmp_path, "intel-rapl:0", 900_000, 1_000_000)
    pkg1 = _zone(tmp_path, "intel-rapl:1", 100, 1_000_000)
    _zone(tmp_path, "intel-rapl:0:0", 5, 1_000_000)  # a sub-zone (core): already in pkg 0
    monkeypatch.setattr(energy, "RAPL_ROOT", tmp_path)
    rapl = energy._Rapl(tmp_path, interval=60)
    (pkg0 / "energy_uj").write_text("50000")  # wrapped: +150 000 µJ
    rapl.poll()
    (pkg0 / "energy_uj").write_text("150000")  # +100 000
    (pkg1 / "energy_uj").write_text("250100")  # +250 000
    assert rapl.stop() == pytest.approx(0.5)

    with EnergyMeter("cpu") as meter:
        (pkg1 / "energy_uj").write_text("450100")  # +200 000 µJ
    r = meter.result()
    assert r["source"] == "rapl" and "RAPL" in r["note"]
    assert r["joules"] == pytest.approx(0.2)


def test_unreadable_rapl_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    z = _zone(tmp_path, "intel-rapl:0", 1, 10)
    (z / "energy_uj").unlink()  # like a root-only counter: reading fails
    monkeypatch.setattr(energy, "RAPL_ROOT", tmp_path)
    with EnergyMeter("cpu") as meter:
        pass
    assert meter.result()["source"] == "estimate"


def _session(joules: float, seconds: float, source: str = "estimate") -> dict[str, object]:
    return {"joules": joules, "kwh": joules / 3.6e6, "seconds": seconds, "source": source,
            "note": "n"}


def test_record_energy_sums_resumed_sessions(tmp_path: Path) -> None:
    path = tmp_path / "energy.json"
    energy.record_energy(path, _session(10.0, 2.0), resuming=False)
    energy.record_energy(path, _session(5.0, 1.0), resuming=True)
    r = read_json(path)
    assert list(r) == ["joules", "kwh", "seconds", "source", "note"]
    assert (r["joules"], r["seconds"]) == (15.0, 3.0) and r["kwh"] == pytest.approx(15 / 3.6e6)
    # a fresh start replaces the record; pretraining adds its ranks and steps
    out = energy.record_energy(path, _session(8.0, 1.0), resuming=False, world_size=2, steps=4)
    assert read_json(path) == out
    assert list(out)[-3:] == ["world_size", "steps", "joules_per_step"]
    assert (out["joules"], out["joules_per_step"]) == (8.0, 2.0)
    energy.record_energy(tmp_path / "new.json", _session(1.0, 1.0), resuming=True)
    assert read_json(tmp_path / "new.json")["joules"] == 1.0  # killed before any record


def test_rank_share_counts_rapl_once_per_node() -> None:
    assert energy.rank_share(_session(3.0, 1.0, "nvml"), 1) == 3.0
    assert energy.rank_share(_session(3.0, 1.0, "estimate"), 1) == 3.0
    assert energy.rank_share(_session(3.0, 1.0, "rapl"), 0) == 3.0
    assert energy.rank_share(_session(3.0, 1.0, "rapl"), 1) == 0.0
