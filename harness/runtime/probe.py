"""The few-shot linear probe: a closed-form ridge regression on frozen features, its penalty
chosen on the few-shot train set alone (leave-one-out), as big_vision's few-shot evaluator.
"""

from __future__ import annotations

import numpy as np
import torch

L2_GRID = tuple(2.0**k for k in range(-10, 21))  # few-shot ridge penalties searched


BIAS_FEATURE = 100.0  # constant feature appended for the probe's bias (almost unpenalised)


def fewshot_indices(labels: torch.Tensor, shots: int, num_classes: int, seed: int) -> torch.Tensor:
    """``shots`` train indices per class (fewer where a class has fewer), chosen by ``seed``."""
    order = torch.from_numpy(np.random.default_rng([seed, 11]).permutation(len(labels)))
    picked: list[torch.Tensor] = []
    ordered = labels[order]
    for c in range(num_classes):
        picked.append(order[ordered == c][:shots])
    return torch.cat(picked)


def ridge_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    l2_grid: tuple[float, ...] = L2_GRID,
) -> tuple[float, float]:
    """Closed-form ridge regression to ±1 targets; returns (test accuracy, chosen penalty).

    Features are standardised with the train (few-shot) statistics and get a constant bias
    feature (``BIAS_FEATURE``, so the bias is barely penalised), as in big_vision's few-shot
    evaluator. The penalty is chosen on the few-shot train set alone, by leave-one-out
    cross-validation, which ridge regression gives in closed form: with the hat matrix
    H = X (XᵀX + λI)⁻¹ Xᵀ, the prediction for point i from a fit without it is
    (ŷᵢ − Hᵢᵢ yᵢ) / (1 − Hᵢᵢ). The λ of ``l2_grid`` (a log-scale grid) with the highest
    leave-one-out accuracy wins; ties go to the lower leave-one-out squared error, then to the
    larger λ. The test set is used only to score the chosen λ.
    """
    x = np.asarray(train_x, dtype=np.float64)
    labels = np.asarray(train_y).astype(np.int64)
    mean, std = x.mean(axis=0, keepdims=True), x.std(axis=0, keepdims=True) + 1e-5

    def prep(z):
        z = (np.asarray(z, dtype=np.float64) - mean) / std
        return np.concatenate([z, np.full((len(z), 1), BIAS_FEATURE)], axis=1)

    x, xt = prep(x), prep(test_x)
    y = 2.0 * np.eye(num_classes)[labels] - 1.0  # (N, C) in {-1, +1}
    eigs, q = np.linalg.eigh(x.T @ x)  # XᵀX = Q diag(eigs) Qᵀ
    eigs = np.clip(eigs, 0.0, None)
    xq, qty = x @ q, q.T @ (x.T @ y)  # (N, D), (D, C)
    best = None
    for l2 in l2_grid:
        scale = 1.0 / (eigs + l2)
        fitted = (xq * scale) @ qty  # X W
        hat = np.einsum("nd,d,nd->n", xq, scale, xq)[:, None]  # H_ii
        loo = (fitted - hat * y) / np.clip(1.0 - hat, 1e-12, None)
        key = ((loo.argmax(axis=1) == labels).mean(), -((loo - y) ** 2).mean(), l2)
        if best is None or key > best[0]:
            best = (key, l2)
    l2 = best[1]
    w = q @ (qty / (eigs + l2)[:, None])  # (D, C)
    accuracy = float(((xt @ w).argmax(axis=1) == np.asarray(test_y)).mean())
    return accuracy, l2


def fewshot_probe(train_x, train_y, test_x, test_y, num_classes: int,
                  l2_grid: tuple[float, ...] = L2_GRID) -> float:
    """Few-shot linear-probe test accuracy (see ``ridge_probe`` for how λ is chosen)."""
    return ridge_probe(train_x, train_y, test_x, test_y, num_classes, l2_grid)[0]


__all__ = ["fewshot_indices", "fewshot_probe", "ridge_probe"]
