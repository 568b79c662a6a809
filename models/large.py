"""Generated models over protobuf's 2 GiB limit, written with external data, weights tensor by tensor.

``write_mlp`` builds the model of issue 15: three MatMul+Relu layers (12000x16000, 16000x12000,
12000x16000 fp32 by default: 2.3 GB of weights) on an input ``x`` of shape ``[2, 12000]``. Weights are seeded
N(0, 1/fan_in) and streamed to one ``.data`` file in row blocks, so writing never holds more than one block:
no ModelProto of the weights is ever built. The graph file references the data file by a relative location,
as exporters write it.

    python -m models.large mlp /tmp/big/big.onnx            # 2.3 GB
    python -m models.large mlp /tmp/small.onnx --scale 0.01  # the same graph, 120x160 weights
"""

from __future__ import annotations

import argparse
import os
import pathlib

import numpy as np
import onnx_ir as ir

__all__ = ["MLP_SHAPES", "mlp_shapes", "reference_mlp", "write_mlp"]

#: The three weight shapes of issue 15's model (2.30 GB of float32).
MLP_SHAPES = ((12000, 16000), (16000, 12000), (12000, 16000))
BATCH = 2
_BLOCK_ROWS = 1024


def mlp_shapes(scale: float = 1.0) -> tuple[tuple[int, int], ...]:
    """``MLP_SHAPES`` scaled (at least 8 rows/columns per weight), keeping the chain consistent."""
    dims = [max(8, round(d * scale)) for d in (12000, 16000, 12000, 16000)]
    return tuple((dims[i], dims[i + 1]) for i in range(3))


def _weight_blocks(shape: tuple[int, int], seed: int):
    """Row blocks of one seeded weight, N(0, 1/fan_in) in float32."""
    rows, cols = shape
    rng = np.random.default_rng(seed)
    scale = np.float32(1.0 / np.sqrt(rows))
    for start in range(0, rows, _BLOCK_ROWS):
        block = rng.standard_normal((min(_BLOCK_ROWS, rows - start), cols), dtype=np.float32)
        block *= scale
        yield block


def write_mlp(path: str | os.PathLike, *, scale: float = 1.0, seed: int = 0) -> pathlib.Path:
    """Write the MatMul+Relu chain to ``path`` with its weights in ``<name>.data`` beside it.

    Args:
        path: Destination ``.onnx`` file (its folder must exist).
        scale: Multiplies every weight dimension (1.0: issue 15's 2.3 GB model).
        seed: Seed of the weights (weight ``i`` uses ``seed + i``).

    Returns:
        The model path.
    """
    path = pathlib.Path(path)
    shapes = mlp_shapes(scale)
    data_name = path.name + ".data"
    tensors = []
    offset = 0
    with open(path.parent / data_name, "wb") as data:
        for i, shape in enumerate(shapes):
            for block in _weight_blocks(shape, seed + i):
                block.tofile(data)
            length = shape[0] * shape[1] * 4
            tensors.append(
                ir.ExternalTensor(
                    data_name,
                    offset,
                    length,
                    ir.DataType.FLOAT,
                    shape=ir.Shape(shape),
                    name=f"w{i}",
                    base_dir=path.parent,
                )
            )
            offset += length
    x = ir.Value(name="x", shape=ir.Shape([BATCH, shapes[0][0]]), type=ir.TensorType(ir.DataType.FLOAT))
    nodes = []
    initializers = []
    previous = x
    for i, tensor in enumerate(tensors):
        weight = ir.Value(
            name=f"w{i}", shape=ir.Shape(tensor.shape), type=ir.TensorType(ir.DataType.FLOAT), const_value=tensor
        )
        initializers.append(weight)
        matmul = ir.node("MatMul", [previous, weight], name=f"matmul{i}")
        matmul.outputs[0].name = f"m{i}"
        relu = ir.node("Relu", [matmul.outputs[0]], name=f"relu{i}")
        relu.outputs[0].name = f"r{i}"
        nodes += [matmul, relu]
        previous = relu.outputs[0]
    previous.shape = ir.Shape([BATCH, shapes[-1][1]])
    previous.type = ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph([x], [previous], nodes=nodes, initializers=initializers, opset_imports={"": 17}, name="mlp")
    model = ir.Model(graph, ir_version=8, producer_name="models.large")
    ir.save(model, path)  # external tensors keep their location/offset: only the graph is serialized
    return path


def reference_mlp(x: np.ndarray, *, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    """``write_mlp``'s output for ``x``, computed in numpy block by block (for checks without onnxruntime)."""
    out = x.astype(np.float32)
    for i, shape in enumerate(mlp_shapes(scale)):
        result = np.zeros((out.shape[0], shape[1]), dtype=np.float32)
        start = 0
        for block in _weight_blocks(shape, seed + i):
            result += out[:, start : start + block.shape[0]] @ block
            start += block.shape[0]
        out = np.maximum(result, 0)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["mlp"])
    parser.add_argument("path", type=pathlib.Path)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    written = write_mlp(args.path, scale=args.scale, seed=args.seed)
    size = written.stat().st_size + (written.parent / (written.name + ".data")).stat().st_size
    print(f"wrote {written} ({size / 1e9:.2f} GB with its data)")


if __name__ == "__main__":
    main()
