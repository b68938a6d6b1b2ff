"""Logistic-regression probes in torch (no scikit-learn here): multinomial, L2-penalised, fitted by L-BFGS, deterministic."""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor


class Probe(NamedTuple):
    weight: Float[Tensor, "classes d"]  # on standardised features
    bias: Float[Tensor, " classes"]
    mean: Float[Tensor, " d"]
    std: Float[Tensor, " d"]

    def logits(self, x: Float[Tensor, "n d"]) -> Float[Tensor, "n classes"]:
        return ((x.double() - self.mean) / self.std) @ self.weight.T + self.bias

    def predict(self, x: Float[Tensor, "n d"]) -> Int[Tensor, " n"]:
        return self.logits(x).argmax(-1)

    def direction(self, cls: int) -> Float[Tensor, " d"]:
        """The class's weight vector in the raw feature space (undoing the standardisation), unit norm."""
        w = self.weight[cls] / self.std
        return w / w.norm().clamp_min(1e-12)


def fit_logistic(
    x: Float[Tensor, "n d"], y: Int[Tensor, " n"], n_classes: int, *, l2: float = 1e-3, iters: int = 100
) -> Probe:
    """Multinomial logistic regression on standardised features: mean cross-entropy + l2 * ||W||^2."""
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ weight.T + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return Probe(weight.detach(), bias.detach(), mean, std)
