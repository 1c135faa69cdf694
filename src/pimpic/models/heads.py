"""Projection heads f (PiM) and g (PiC) (docs/method.md §4–§5)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """``Linear(in, h) → BN → ReLU → Linear(h, h) → BN → ReLU → Linear(h, out) → L2-normalise``.

    PiM's head f uses ``hidden = 2d``; PiC's head g uses ``hidden = d`` (d = 128 in the paper).
    ``(M, in_dim) → (M, out_dim)``, unit L2 norm per row. BatchNorm statistics are taken over all
    M rows together.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.net(x), dim=-1)
