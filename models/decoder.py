"""A decoder-style transformer with random weights, exported with external data (over 2 GiB by default).

Token embeddings and learned positions, pre-LayerNorm blocks of causal multi-head self-attention and a GELU
MLP, a final LayerNorm and an lm head tied to the token embeddings (``logits = h @ E^T``). Defaults: vocabulary
32000, width 2048, 16 heads, 10 blocks: 2.27 GB of float32 weights. Weights are seeded N(0, 0.02). Exported
with ``torch.onnx.export(..., dynamo=True, optimize=False)`` (see ``models.export``) on ``tokens`` int64
``[1, SEQ]`` and written with ``onnx_ir.save`` to ``<name>.data`` beside the model, tensor by tensor.

    python -m models.decoder /tmp/decoder/decoder.onnx              # 2.27 GB
    python -m models.decoder /tmp/small.onnx --layers 2 --hidden 128 --vocab 1000
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib

import onnx_ir as ir
import torch
from torch import nn

__all__ = ["Decoder", "export_decoder"]

SEQ = 16


class _Block(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.up = nn.Linear(hidden, 4 * hidden)
        self.down = nn.Linear(4 * hidden, hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        head = hidden // self.heads
        q, k, v = self.qkv(self.norm1(x)).split(hidden, dim=-1)
        q = q.reshape(batch, seq, self.heads, head).transpose(1, 2)
        k = k.reshape(batch, seq, self.heads, head).transpose(1, 2)
        v = v.reshape(batch, seq, self.heads, head).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(head) + mask
        attended = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, seq, hidden)
        x = x + self.proj(attended)
        return x + self.down(nn.functional.gelu(self.up(self.norm2(x))))


class Decoder(nn.Module):
    """Token ids ``[B, S]`` -> next-token logits ``[B, S, vocab]`` (causal; lm head tied to the embeddings)."""

    def __init__(self, *, vocab: int = 32000, hidden: int = 2048, heads: int = 16, layers: int = 10,
                 max_seq: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.position = nn.Embedding(max_seq, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        seq = tokens.shape[1]
        positions = torch.arange(seq, device=tokens.device)
        x = self.embed(tokens) + self.position(positions)
        mask = torch.full((seq, seq), float("-inf")).triu(1)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x) @ self.embed.weight.T  # tied lm head


def export_decoder(path: str | os.PathLike, *, seed: int = 0, opset: int = 18, **sizes: int) -> pathlib.Path:
    """Export a seeded random :class:`Decoder` to ``path`` with its weights in ``<name>.data``.

    Args:
        path: Destination ``.onnx`` file (its folder is created).
        seed: Seed of the weights.
        opset: Default-domain opset.
        **sizes: ``vocab``, ``hidden``, ``heads``, ``layers``, ``max_seq`` (see :class:`Decoder`).

    Returns:
        The model path.
    """
    from models.export import _to_standard_ops

    torch.manual_seed(seed)
    with torch.no_grad():
        module = Decoder(**sizes).eval()
        for name, parameter in module.named_parameters():
            if "norm" not in name:
                parameter.normal_(0.0, 0.02)
    tokens = torch.randint(0, module.embed.num_embeddings, (1, SEQ))
    program = torch.onnx.export(
        module, (tokens,), dynamo=True, optimize=False, opset_version=opset,
        input_names=["tokens"], output_names=["logits"], verbose=False,
    )
    model = program.model
    _to_standard_ops(model)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ir.save(model, path, external_data=path.name + ".data")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=pathlib.Path)
    for name, default in (("vocab", 32000), ("hidden", 2048), ("heads", 16), ("layers", 10)):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args(argv)
    written = export_decoder(args.path, vocab=args.vocab, hidden=args.hidden, heads=args.heads, layers=args.layers)
    size = written.stat().st_size + (written.parent / (written.name + ".data")).stat().st_size
    print(f"wrote {written} ({size / 1e9:.2f} GB with its data)")


if __name__ == "__main__":
    main()
