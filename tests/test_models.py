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


def test_released_conv4_has_the_standard_parameters_and_the_released_pad() -> None:
    standard, released = Conv4(1, 5), Conv4(1, 5, variant="released")
    shapes = {k: v.shape for k, v in standard.named_parameters()}
    assert {k: v.shape for k, v in released.named_parameters()} == shapes
    assert num_parameters(released) == 113_221
    pads = [m for m in released.modules() if isinstance(m, nn.ZeroPad2d)]
    assert len(pads) == 1 and pads[0].padding == (0, 1, 0, 1)
    assert released.features[1][-1] is pads[0]  # after the second block's ReLU
    # At 28x28 the pad is exactly the zero row and column the third conv pads with anyway.
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    released.double().load_state_dict(standard.double().state_dict())
    assert torch.equal(released(x), standard(x))
    # At a size where block 2 ends even (32: 16, 8), the pad adds a row: 8 -> 9 -> 5 -> 3.
    assert Conv4(1, 5, image_size=32, variant="released").head.in_features == 64 * 3 * 3
    assert Conv4(1, 5, image_size=32).head.in_features == 64 * 2 * 2


def test_released_conv4_initialization_ranges() -> None:
    torch.manual_seed(0)
    model = Conv4(1, 5, variant="released")
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(layers) == 5
    for layer in layers:
        fan_in = layer.weight[0].numel()
        fan_out = layer.weight.shape[0] * layer.weight[0, 0].numel()
        bound = 1.73 * (6 / (fan_in + fan_out)) ** 0.5  # xavier-uniform, gain 1.73
        w = layer.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
        b = layer.bias.detach()
        assert b.min() >= 0 and b.max() <= 0.05 and b.max() > 0.04
    for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(norm.weight, torch.ones(64)) and torch.equal(norm.bias, torch.zeros(64))
    # The standard init (PyTorch's kaiming-uniform, a = sqrt(5)) has signed biases.
    standard_bias = Conv4(1, 5).features[0][0].bias
    assert standard_bias.min() < 0


def test_released_variant_needs_strided_convolutions() -> None:
    with pytest.raises(ValueError, match="downsample='stride'"):
        Conv4(3, 5, image_size=84, downsample="pool", variant="released")
    with pytest.raises(ValueError, match="variant"):
        Conv4(1, 5, variant="paper")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("shape", "given"),
    [((2, 1, 8, 8), r"\(2, 1, 8, 8\)"), ((2, 3, 28, 28), r"\(2, 3, 28, 28\)"), ((1, 28, 28), "")],
)
def test_conv4_names_the_expected_and_the_given_input_shape(shape: tuple, given: str) -> None:
    with pytest.raises(ValueError, match=r"expects images of shape \(N, 1, 28, 28\), got " + given):
        Conv4(1, 5)(torch.zeros(shape))


def test_conv4_input_check_holds_under_vmap() -> None:
    model = Conv4(1, 5)
    params = {k: v.detach().expand(2, *v.shape) for k, v in model.named_parameters()}
    with pytest.raises(ValueError, match=r"got \(5, 1, 14, 14\)"):
        vmap(lambda p, xi: functional_call(model, p, (xi,)))(params, torch.zeros(2, 5, 1, 14, 14))
