"""The few-shot networks: parameter counts, output shapes, BatchNorm without running stats."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from imaml.models import MLP, Conv4, num_parameters


def test_omniglot_conv4_matches_the_released_code() -> None:
    # 4 conv layers (1→64, 3 × 64→64) + 4 BatchNorms + a 256→5 head: 113,221 (PAPER.md).
    assert num_parameters(Conv4(1, 5)) == 113_221
    assert num_parameters(Conv4(1, 20)) == 113_221 + 15 * (64 * 2 * 2 + 1)


def test_miniimagenet_conv4_is_mamls() -> None:
    model = Conv4(3, 5, hidden=32, image_size=84, downsample="pool")
    assert num_parameters(model) == 32_901  # 84 → 42 → 21 → 10 → 5: a 800→5 head
    assert model(torch.randn(2, 3, 84, 84)).shape == (2, 5)


@pytest.mark.parametrize("ways", [5, 20])
def test_conv4_output_shape(ways: int) -> None:
    assert Conv4(1, ways)(torch.randn(7, 1, 28, 28)).shape == (7, ways)


def test_mlp_is_the_40_40_sinusoid_regressor() -> None:
    model = MLP(1, 1, hidden=(40, 40))
    assert num_parameters(model) == (1 * 40 + 40) + (40 * 40 + 40) + (40 + 1)
    assert model(torch.randn(10, 1)).shape == (10, 1)


def test_batchnorm_keeps_no_running_statistics() -> None:
    model = Conv4(1, 5)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 4
    assert all(not m.track_running_stats and m.running_mean is None for m in norms)
    assert list(model.buffers()) == []
    x = torch.randn(6, 1, 28, 28)
    # Batch statistics in both modes: evaluation behaves exactly as training.
    assert torch.equal(model.train()(x), model.eval()(x))


def test_conv4_runs_under_vmap_with_per_task_parameters() -> None:
    model = Conv4(1, 5)
    params = {k: v.detach().expand(3, *v.shape) for k, v in model.named_parameters()}
    x = torch.randn(3, 5, 1, 28, 28)
    out = vmap(lambda p, xi: functional_call(model, p, (xi,)))(params, x)
    assert out.shape == (3, 5, 5)
    torch.testing.assert_close(out[1], model(x[1]))


def test_conv4_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="downsample"):
        Conv4(1, 5, downsample="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too small"):
        Conv4(1, 5, image_size=8, downsample="pool")
