"""Energy used by a stage (pretraining, fine-tuning), measured as well as the machine allows.

Sources, best first:

* ``nvml`` — on CUDA, the GPU's cumulative energy counter
  (``nvmlDeviceGetTotalEnergyConsumption``, mJ; Volta and newer), read from the driver's
  ``libnvidia-ml.so.1`` via ctypes. GPU only: the host CPU and memory are not included.
* ``rapl`` — on CPU, Intel/AMD RAPL package counters
  (``/sys/class/powercap/intel-rapl:<n>/energy_uj``), polled in a background thread so counter
  wrap-around is handled. Whole sockets: other processes on the machine are included.
* ``estimate`` — when neither is readable (no NVML library, counters root-only, not Linux): CPU time
  of this process × an assumed power per busy core, plus wall time × an assumed GPU board power
  on CUDA. Clearly labelled; the assumption is stated in ``note``.

Usage::

    with EnergyMeter(device) as meter:
        train()
    meter.result()   # {"joules", "kwh", "seconds", "source", "note"}
    record_energy(run_dir / "energy.json", meter.result(), resuming=resuming)

A run's ``energy.json`` is that record summed over the run's sessions (a resumed run adds its
energy to the earlier sessions') and, under DDP, over its ranks (:func:`rank_share`).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import torch

from pimpic.io import read_json, write_json

#: assumed power of one fully busy CPU core (W): a 200 W server CPU with 20 cores
CPU_WATTS_PER_CORE = 10.0
#: assumed GPU board power under training load (W) when NVML is not available
GPU_WATTS = 300.0
RAPL_ROOT = Path("/sys/class/powercap")
JOULES_PER_KWH = 3.6e6


class _Rapl:
    """Package-level RAPL counters, polled so that wrap-arounds are counted."""

    def __init__(self, root: Path | None = None, interval: float = 5.0) -> None:
        root = RAPL_ROOT if root is None else root
        # top-level zones are packages; sub-zones (intel-rapl:0:0, cores/dram) are inside them
        zones = [p for p in sorted(root.glob("intel-rapl:*")) if p.name.count(":") == 1]
        if not zones:
            raise OSError("no RAPL package zones")
        self.files = [z / "energy_uj" for z in zones]
        self.ranges = [int((z / "max_energy_range_uj").read_text()) for z in zones]
        self.last = self._read()  # raises PermissionError when root-only
        self.total_uj = 0
        self.interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self) -> list[int]:
        return [int(f.read_text()) for f in self.files]

    def poll(self) -> None:
        with self._lock:
            now = self._read()
            for k, (a, b) in enumerate(zip(self.last, now, strict=True)):
                self.total_uj += b - a if b >= a else b + self.ranges[k] - a
            self.last = now

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.poll()
        return self.total_uj / 1e6


class _Nvml:
    """The GPU's energy counter (mJ since the driver loaded) through ``libnvidia-ml`` directly
    (ctypes), so no ``pynvml`` package is needed; the library ships with the driver."""

    def __init__(self, device: torch.device) -> None:
        import ctypes

        self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        self._check(self.lib.nvmlInit_v2(), "nvmlInit")
        self.handle = ctypes.c_void_p()
        index = device.index if device.index is not None else torch.cuda.current_device()
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        # CUDA_VISIBLE_DEVICES may renumber GPUs: the UUID names the physical one
        ok = uuid is not None and self.lib.nvmlDeviceGetHandleByUUID(
            f"GPU-{uuid}".encode(), ctypes.byref(self.handle)) == 0
        if not ok:
            self._check(self.lib.nvmlDeviceGetHandleByIndex_v2(
                ctypes.c_uint(index), ctypes.byref(self.handle)), "nvmlDeviceGetHandleByIndex")
        self.read()  # fails here on GPUs without the counter (pre-Volta)

    @staticmethod
    def _check(code: int, what: str) -> None:
        if code != 0:
            raise OSError(f"{what} failed with NVML error {code}")

    def read(self) -> float:
        """Joules since the driver loaded."""
        import ctypes

        mj = ctypes.c_ulonglong()
        self._check(self.lib.nvmlDeviceGetTotalEnergyConsumption(self.handle, ctypes.byref(mj)),
                    "nvmlDeviceGetTotalEnergyConsumption")
        return mj.value / 1e3


class EnergyMeter:
    """Context manager measuring the energy used inside its block.

    Args:
        device: the compute device (``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``).
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.source = "estimate"
        self.note = ""
        self._joules: float | None = None
        self._seconds = 0.0
        self._nvml: _Nvml | None = None
        self._rapl: _Rapl | None = None

    def __enter__(self) -> EnergyMeter:
        self._t0 = time.perf_counter()
        self._cpu0 = time.process_time()
        self._joules = None
        if self.device.type == "cuda":
            try:
                self._nvml = _Nvml(self.device)
                self._j0 = self._nvml.read()
                self.source = "nvml"
                self.note = "GPU board energy from NVML (host CPU and memory not included)"
                return self
            except (OSError, AttributeError):  # no driver library or no counter: estimate
                self._nvml = None
        else:
            try:
                self._rapl = _Rapl()
                self.source = "rapl"
                self.note = ("RAPL package energy of all CPU sockets (includes other processes "
                             "on this machine; GPUs not included)")
                return self
            except (OSError, ValueError):
                self._rapl = None
        self.source = "estimate"
        self.note = (f"estimate, not a measurement: process CPU time × {CPU_WATTS_PER_CORE:g} W "
                     "per busy core (DataLoader worker processes not counted)")
        if self.device.type == "cuda":
            self.note += f" + wall time × {GPU_WATTS:g} W assumed GPU board power"
        return self

    def __exit__(self, *exc: object) -> None:
        self._seconds = time.perf_counter() - self._t0
        if self.source == "nvml" and self._nvml is not None:
            self._joules = self._nvml.read() - self._j0
        elif self.source == "rapl" and self._rapl is not None:
            self._joules = self._rapl.stop()
        else:
            cpu_s = time.process_time() - self._cpu0
            self._joules = cpu_s * CPU_WATTS_PER_CORE
            if self.device.type == "cuda":
                self._joules += self._seconds * GPU_WATTS

    def result(self) -> dict[str, Any]:
        """``{"joules", "kwh", "seconds", "source", "note"}`` of the finished block."""
        if self._joules is None:
            raise RuntimeError("EnergyMeter.result() before the measured block ended")
        return {"joules": self._joules, "kwh": self._joules / JOULES_PER_KWH,
                "seconds": self._seconds, "source": self.source, "note": self.note}


def rank_share(result: dict[str, Any], local_rank: int) -> float:
    """This rank's part of a session's joules when the ranks' results are summed: per-GPU
    (NVML) and per-process (estimate) energies add up over ranks; RAPL already covers the whole
    node, so only one rank per node (``local_rank`` 0) contributes it."""
    return float(result["joules"]) if result["source"] != "rapl" or local_rank == 0 else 0.0


def record_energy(path: Path, session: dict[str, Any], *, resuming: bool,
                  steps: int | None = None, **extra: Any) -> dict[str, Any]:
    """Write a run's ``energy.json``: ``session`` (:meth:`EnergyMeter.result`, all ranks'
    joules summed where distributed) plus, when ``resuming``, the joules and seconds the earlier
    sessions recorded in ``path``; returns what was written.

    Args:
        path: the run's ``energy.json``.
        session: this session's result.
        resuming: the run continues earlier sessions (a fresh run replaces the file).
        steps: the run's optimiser steps; records ``steps`` and ``joules_per_step``.
        extra: further entries to record (e.g. ``world_size``).
    """
    record = dict(session)
    old = read_json(path) if resuming and path.is_file() else {}
    for key in ("joules", "seconds"):
        if isinstance(old.get(key), (int, float)):
            record[key] += old[key]
    record["kwh"] = record["joules"] / JOULES_PER_KWH
    record.update(extra)
    if steps is not None:
        record["steps"] = steps
        record["joules_per_step"] = record["joules"] / max(steps, 1)
    write_json(path, record)
    return record
