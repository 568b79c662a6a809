"""Torch definitions of the model zoo that sftonnx's passes are tested and benchmarked on.

Every net is small, built from a fixed seed and carries non-trivial BatchNorm statistics, so the exported
graphs hold the patterns our passes look for (Conv+BatchNormalization, Gemm chains, attention blocks) and
folding them changes the numbers for real. Use :func:`build` to get a ready-to-export net in eval mode.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "MobileNetV2Style",
    "ResNet18Style",
    "SmallCNN",
    "TinyBert",
    "build",
    "calibrate_batchnorm",
]


class SmallCNN(nn.Module):
    """The two-conv CNN of classic compression examples.

    conv3x3(in -> C), ReLU, conv3x3(C -> C), ReLU, flatten, Linear -> classes. Convolutions are padded, so the
    FC layer sees ``C * image_size**2`` features: 50 k params for the 1x8x8 digits net, 0.5 M for 1x28x28.

    Args:
        in_channels: Input channels (1 for grayscale).
        image_size: Input height and width.
        num_classes: Output logits.
        channels: Width of both convolutions.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10, channels: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(channels * image_size * image_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    """ResNet basic block: two conv3x3+BN, identity or 1x1 conv+BN shortcut, add, ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ResNet18Style(nn.Module):
    """ResNet-18 layout for CIFAR-sized input (3x32x32).

    Stem conv3x3+BN+ReLU (no max-pool, as usual for 32x32 input), four stages of two BasicBlocks with
    ``width, 2*width, 4*width, 8*width`` channels (strides 1, 2, 2, 2), global average pool, Linear. The
    default ``width=32`` is half of ResNet-18's 64: 2.8 M params (11.5 MB of float32) instead of 11 M.

    Args:
        width: Channels of the first stage.
        num_classes: Output logits.
        in_channels: Input channels.
    """

    def __init__(self, width: int = 32, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        layers: list[nn.Module] = []
        channels = width
        for stage, stride in enumerate((1, 2, 2, 2)):
            out_channels = width * 2**stage
            layers += [BasicBlock(channels, out_channels, stride), BasicBlock(out_channels, out_channels)]
            channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without losing more than 10% (MobileNet convention)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn_relu6(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand+BN+ReLU6, depthwise 3x3+BN+ReLU6, 1x1 project+BN, residual if possible.

    The residual add is used when the stride is 1 and input and output channels agree.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(in_channels, hidden, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2Style(nn.Module):
    """MobileNetV2 for CIFAR-sized input (3x32x32).

    The ImageNet block table (expansion, channels, repeats, stride) with the stem and the first strided stage
    at stride 1, so a 32x32 input ends at 4x4; then 1x1 conv to ``1280 * max(1, width_mult)``, global average
    pool, Linear. ``width_mult=1.0`` has 2.2 M params (a 10 MB file with the BN statistics).

    Args:
        width_mult: Channel multiplier (channels rounded to multiples of 8).
        num_classes: Output logits.
        in_channels: Input channels.
    """

    # (expansion, channels, repeats, stride of the first block)
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, width_mult: float = 1.0, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        channels = _make_divisible(32 * width_mult)
        last_channels = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn_relu6(in_channels, channels, 3)]
        for expansion, base, repeats, stride in self.SETTINGS:
            out_channels = _make_divisible(base * width_mult)
            for index in range(repeats):
                layers.append(
                    InvertedResidual(channels, out_channels, stride if index == 0 else 1, expansion)
                )
                channels = out_channels
        layers.append(_conv_bn_relu6(channels, last_channels, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class SelfAttention(nn.Module):
    """Multi-head self-attention written out: Q/K/V Linear, QK^T * scale, Softmax, xV, output Linear."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of {heads} heads")
        self.heads = heads
        self.head_dim = hidden // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.output = nn.Linear(hidden, hidden)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        q, k, v = (
            self._split_heads(self.query(x)),
            self._split_heads(self.key(x)),
            self._split_heads(self.value(x)),
        )
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        context = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.output(context.transpose(1, 2).reshape(batch, seq, hidden))


class EncoderLayer(nn.Module):
    """Post-LN BERT layer: x = LN(x + Attn(x)); x = LN(x + W2 GELU(W1 x))."""

    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float):
        super().__init__()
        self.attention = SelfAttention(hidden, heads)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn_in = nn.Linear(hidden, intermediate)
        self.gelu = nn.GELU()
        self.ffn_out = nn.Linear(intermediate, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.attention(x))
        return self.ffn_norm(x + self.ffn_out(self.gelu(self.ffn_in(x))))


class TinyBert(nn.Module):
    """BERT-mini-like encoder without attention mask (every position attends to every other).

    Token + position embeddings, LayerNorm, ``layers`` post-LN encoder layers, and BERT's pooler
    (tanh(Linear(h[:, 0]))). Input ``input_ids`` int64 [batch, seq] with ``seq <= max_seq``; outputs
    ``(last_hidden_state [batch, seq, hidden], pooler_output [batch, hidden])``. Defaults: 0.55 M params.

    Args:
        vocab_size: Token vocabulary.
        hidden: Model width.
        layers: Encoder layers.
        heads: Attention heads.
        intermediate: FFN width (4 * hidden in BERT).
        max_seq: Rows of the position-embedding table.
        eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        vocab_size: int = 1000,
        hidden: int = 128,
        layers: int = 2,
        heads: int = 2,
        intermediate: int = 512,
        max_seq: int = 32,
        eps: float = 1e-12,
    ):
        super().__init__()
        self.token_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_seq, hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, intermediate, eps) for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)
        self.register_buffer("position_ids", torch.arange(max_seq).unsqueeze(0), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positions = self.position_ids[:, : input_ids.shape[1]]
        x = self.embedding_norm(self.token_embeddings(input_ids) + self.position_embeddings(positions))
        for layer in self.layers:
            x = layer(x)
        return x, torch.tanh(self.pooler(x[:, 0]))


@torch.no_grad()
def calibrate_batchnorm(
    model: nn.Module, example: torch.Tensor, *, batches: int = 4, seed: int = 0
) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics.

    Sets gamma ~ U(0.5, 1.5) and beta ~ N(0, 0.1), then runs ``batches`` standard-normal batches shaped
    like ``example`` in train mode with a cumulative average, so running mean/var are the real (non-zero,
    non-unit) statistics of random input and activations stay normalised. Leaves the model in eval mode.

    Args:
        model: Net to update in place.
        example: Tensor whose shape and dtype the random batches copy (batch dimension included).
        batches: Forward passes to average over.
        seed: Seed of the random gamma/beta and batches.

    Returns:
        The same model, in eval mode.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.weight.copy_(torch.rand(norm.weight.shape, generator=generator) + 0.5)
        norm.bias.copy_(torch.randn(norm.bias.shape, generator=generator) * 0.1)
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average over the calibration batches
    if norms:
        model.train()
        for _ in range(batches):
            model(torch.randn(example.shape, generator=generator, dtype=example.dtype))
    return model.eval()


def build(name: str, *, seed: int = 0, batch: int = 2) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Build a registered net in eval mode, with seeded weights and an example input.

    Args:
        name: A key of ``models.MODELS``.
        seed: Seed of the weight init, the BatchNorm calibration and the example input.
        batch: Batch size of the example input.

    Returns:
        ``(module, example_inputs)``.

    Raises:
        KeyError: If ``name`` is not registered.
    """
    from models import MODELS  # the registry lives in models/__init__.py, which must not import torch

    spec = MODELS[name]
    torch.manual_seed(seed)
    module: nn.Module = globals()[spec.factory](**spec.kwargs)
    generator = torch.Generator().manual_seed(seed + 1)
    if spec.dtype == "int64":
        example = torch.randint(0, spec.high, (batch, *spec.shape), generator=generator)
    else:
        example = torch.randn((batch, *spec.shape), generator=generator)
    calibrate_batchnorm(module, example, seed=seed)
    return module, (example,)
