"""Helpers shared by several methods (not a method: the registry skips ``_`` modules)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def embedding_std(z: Tensor) -> Tensor:
    """Collapse monitor: per-dimension std over rows of the L2-normalised embeddings ``(M, d)``,
    averaged over dimensions (0 when collapsed, about ``1/√d`` when spread out)."""
    z = F.normalize(z.detach().float(), dim=-1)
    return z.std(dim=0).mean() if z.shape[0] > 1 else z.new_zeros(())
