r"""Spearman's rank correlation, row by row: shared by the SHAP fidelity of
channel weights and the sanity checks of maps."""
import torch
from torch import Tensor


def average_ranks(x: Tensor) -> Tensor:
    r"""Ranks (N, K) float64 of each row's values, 0 for the smallest, ties
    sharing the mean of their ranks (scipy's "average" method, minus 1), in
    ``O(K log K)`` per row."""
    values, order = x.sort(dim=1, stable=True)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    group = starts.cumsum(1) - 1
    positions = torch.arange(x.shape[1], dtype=torch.float64, device=x.device).expand(x.shape)
    sums = torch.zeros(x.shape, dtype=torch.float64, device=x.device).scatter_add_(
        1, group, positions)
    counts = torch.zeros_like(sums).scatter_add_(1, group, torch.ones_like(positions))
    mean = sums.gather(1, group) / counts.gather(1, group)
    return torch.empty_like(mean).scatter_(1, order, mean)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    r"""
    Spearman's rank correlation [Spearman, 1904] of each row of ``a`` (N, K)
    with the same row of ``b``: the Pearson correlation of their average
    ranks,

    .. math::
        \rho = \frac{\sum_k (r_k - \bar r)(s_k - \bar s)}
            {\sqrt{\sum_k (r_k - \bar r)^2 \sum_k (s_k - \bar s)^2}}.

    A row whose values are all equal carries no order and scores 0.

    Returns:
        Tensor (N,) in [-1, 1], float64.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} must both be (N, K).")
    if not bool(torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("The maps contain NaN or infinite values: they have no ranks.")
    r, s = average_ranks(a.detach()), average_ranks(b.detach().to(a.device))
    r, s = r - r.mean(1, keepdim=True), s - s.mean(1, keepdim=True)
    norm = (r.pow(2).sum(1) * s.pow(2).sum(1)).sqrt()
    return torch.where(norm > 0, (r * s).sum(1) / torch.where(norm > 0, norm, 1), 0)
