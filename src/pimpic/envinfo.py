"""What a run was made with: versions, git commit, host and device (saved as ``env.json``)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from pimpic import __version__


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _software() -> dict[str, str]:
    """The versions that decide what a run computes: pimpic, python, torch."""
    return {"pimpic": __version__, "python": platform.python_version(),
            "torch": torch.__version__}


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the pimpic checkout (``+dirty`` if modified), or None if not a git tree."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=where, capture_output=True, text=True, timeout=5,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha or None


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform`` reports only the architecture
    on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """A human name of ``device`` (the GPU model, or the CPU and its thread count)."""
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def collect(device: str | torch.device = "cpu", world_size: int = 1) -> dict[str, Any]:
    """Versions of python/torch/monai/numpy/pimpic, git commit, hostname, device, world size."""
    device = torch.device(device)
    return {
        **_software(),
        "cuda": torch.version.cuda,
        "monai": _version("monai"),
        "numpy": _version("numpy"),
        "git_commit": git_commit(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        # what decides whether two CPU runs give the same bits (docs/reproducibility.md): the
        # thread count and the instruction set PyTorch's kernels run with
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "world_size": world_size,
    }


def machine() -> dict[str, str]:
    """This machine for a human reader (the report's hardware section): CPU model and cores,
    GPU, torch/python/pimpic versions and OS."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"CPU": f"{cpu_model()} ({os.cpu_count()} logical cores)", "GPU": gpu,
            **_software(), "OS": platform.platform()}
