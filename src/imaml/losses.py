"""Ready-made per-task ``loss_fn`` for a ``torch.nn.Module``, in the form the engine takes."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from imaml.tree import Params


def classification_loss(
    model: nn.Module,
) -> Callable[[Params, Tensor, Tensor], tuple[Tensor, dict[str, Tensor]]]:
    """``loss_fn(params, x, y) -> (cross-entropy, {"accuracy": ...})`` for one task.

    ``x`` has shape (N, *input_shape) and ``y`` shape (N,) with class indices. Use with
    ``has_aux=True``. The model runs through ``torch.func.functional_call`` with ``params``.
    """

    def loss_fn(params: Params, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits = functional_call(model, params, (x,))
        accuracy = (logits.argmax(dim=-1) == y).to(logits.dtype).mean()
        return F.cross_entropy(logits, y), {"accuracy": accuracy}

    return loss_fn


def regression_loss(model: nn.Module) -> Callable[[Params, Tensor, Tensor], Tensor]:
    """``loss_fn(params, x, y) -> mean squared error`` for one task; x (N, d_in), y (N, d_out)."""

    def loss_fn(params: Params, x: Tensor, y: Tensor) -> Tensor:
        return torch.mean((functional_call(model, params, (x,)) - y) ** 2)

    return loss_fn
