"""The networks of the few-shot literature, ready for ``torch.func.functional_call``.

BatchNorm layers use batch statistics only (``track_running_stats=False``), as in MAML and
iMAML: each task normalizes with its own batch, at training and at test time, and the
modules hold no buffers that a vmapped call would need to update.
"""

from __future__ import annotations

import itertools
from typing import Literal

from torch import Tensor, nn

Downsample = Literal["stride", "pool"]
Variant = Literal["standard", "released"]

RELEASED_GAIN = 1.73
"""The gain of the released iMAML code's xavier-uniform weight init (``make_conv_network``)."""

RELEASED_BIAS_RANGE = (0.0, 0.05)
"""The interval of the released iMAML code's uniform bias init (``make_conv_network``)."""


def conv_block(in_channels: int, out_channels: int, downsample: Downsample) -> nn.Sequential:
    """3×3 conv → BatchNorm (batch statistics) → ReLU, halving the resolution.

    ``"stride"`` uses a stride-2 convolution (MAML's and iMAML's Omniglot network);
    ``"pool"`` a stride-1 convolution followed by 2×2 max-pooling (the mini-ImageNet one).
    """
    stride = 2 if downsample == "stride" else 1
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
        nn.BatchNorm2d(out_channels, track_running_stats=False),
        nn.ReLU(),
    ]
    if downsample == "pool":
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def _conv_output_size(size: int, downsample: Downsample, pad_second: bool) -> int:
    """The side of four blocks' output; ``pad_second`` adds the released code's zero column."""
    for block in range(4):
        size = (size + 1) // 2 if downsample == "stride" else size // 2
        size += int(pad_second and block == 1)
    return size


def released_init(model: nn.Module) -> None:
    """The released iMAML code's initialization, in place: every conv and linear layer's weight
    xavier-uniform with gain 1.73, its bias uniform in [0, 0.05] (BatchNorm keeps 1 and 0).

    aravindr93/imaml_dev, implicit_maml/learner_model.py, ``make_conv_network``.
    """
    for layer in model.modules():
        if isinstance(layer, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(layer.weight, gain=RELEASED_GAIN)
            nn.init.uniform_(layer.bias, *RELEASED_BIAS_RANGE)


class Conv4(nn.Module):
    """Four conv blocks and a linear head: the standard few-shot classifier.

    Input (N, C, H, W) with H = W = ``image_size``; output logits (N, ``ways``).
    ``Conv4(1, 5)`` is the Omniglot network of MAML and iMAML (64 filters, stride-2
    convolutions, 28×28 → 2×2, 113,221 parameters for 5 ways);
    ``Conv4(3, 5, hidden=32, image_size=84, downsample="pool")`` the mini-ImageNet one.

    ``variant="released"`` is the network of the released iMAML code (aravindr93/imaml_dev,
    implicit_maml/learner_model.py, ``make_conv_network``): the stride-2 network with a
    ``ZeroPad2d((0, 1, 0, 1))`` after the second block's ReLU and :func:`released_init`.
    Its parameters have the standard network's names and shapes. At 28×28 the pad changes
    nothing: the third convolution's padding already supplies that zero row and column
    (7×7 → 4×4 either way), so only the initialization differs.
    """

    def __init__(
        self,
        in_channels: int,
        ways: int,
        hidden: int = 64,
        image_size: int = 28,
        downsample: Downsample = "stride",
        variant: Variant = "standard",
    ) -> None:
        super().__init__()
        if downsample not in ("stride", "pool"):
            raise ValueError(f"downsample must be 'stride' or 'pool', got {downsample!r}")
        if variant not in ("standard", "released"):
            raise ValueError(f"variant must be 'standard' or 'released', got {variant!r}")
        released = variant == "released"
        if released and downsample != "stride":
            raise ValueError("variant 'released' is a stride-2 network; use downsample='stride'")
        channels = [in_channels, hidden, hidden, hidden, hidden]
        blocks = [conv_block(channels[i], channels[i + 1], downsample) for i in range(4)]
        if released:
            blocks[1].append(nn.ZeroPad2d((0, 1, 0, 1)))
        self.features = nn.Sequential(*blocks, nn.Flatten())
        side = _conv_output_size(image_size, downsample, pad_second=released)
        if side < 1:
            raise ValueError(f"image_size {image_size} is too small for four conv blocks")
        self.head = nn.Linear(hidden * side * side, ways)
        self.input_shape = (in_channels, image_size, image_size)
        if released:
            released_init(self)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape (N, ways) for images of shape (N, C, H, W) = (N, *input_shape).

        Raises:
            ValueError: ``x`` is not shaped (N, in_channels, image_size, image_size).
        """
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            c, h, w = self.input_shape
            raise ValueError(
                f"Conv4 expects images of shape (N, {c}, {h}, {w}), got {tuple(x.shape)}"
            )
        return self.head(self.features(x))


class MLP(nn.Module):
    """Fully connected ReLU network; ``MLP(1, 1)`` is MAML's 40-40 sinusoid regressor.

    Input (N, ``in_features``), output (N, ``out_features``).
    """

    def __init__(
        self, in_features: int = 1, out_features: int = 1, hidden: tuple[int, ...] = (40, 40)
    ) -> None:
        super().__init__()
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Outputs of shape (N, out_features) for inputs of shape (N, in_features)."""
        return self.net(x)


def num_parameters(model: nn.Module) -> int:
    """The number of scalar parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
