"""Measure what the issue-#7 fusions add beyond onnxruntime: latency and node counts, interleaved.

Usage::

    python benchmarks/fusion_bench.py bert  [--rounds 15] [--runs 20]
    python benchmarks/fusion_bench.py conv  [--rounds 9]  [--runs 10]

``bert``: tiny_bert at onnxruntime's default level (all), batch 1 and 8: the original, ``lossless`` (the
current preset plus the new standard fusions), ``lossless`` + ``ort-offline{level=extended}``, ``lossless``
+ ``fuse-ort``, ``lossless`` + ``fuse-ort`` + ``ort-offline``, and onnxruntime's transformer optimizer.

``conv``: resnet18, mobilenetv2, digits_cnn, light_resnet50 and "TF-style" variants of resnet18 and
mobilenetv2 (every padded Conv as an explicit ``Pad`` + unpadded Conv, and a per-channel input
normalization ``(x - mean) / std`` in front, as Keras/TF exports look): node counts in the file and after
onnxruntime's basic level, and latency at the basic and all levels, for the original, the current
``lossless`` preset, and ``lossless`` with the new passes.

Every session runs on the CPU EP with default threads; timings are per-round medians interleaved across
the variants (rounds alternate the variants, so machine noise hits all of them alike), reported in ms.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sftonnx import io  # noqa: E402
from sftonnx.api import optimize  # noqa: E402
from sftonnx.passes import PRESETS, REGISTRY  # noqa: E402
from sftonnx.passes.fusion.ort import FuseOrtPass  # noqa: E402
from sftonnx.passes.fusion.standard import CollapseLayoutPass, FoldInputNormPass, FoldPadPass  # noqa: E402
from sftonnx.passes.fusion.transformer import FuseGeluPass, FuseLayerNormPass, FuseSoftmaxPass  # noqa: E402
from sftonnx.pipeline import build_passes  # noqa: E402

NEW = {cls.name: cls for cls in (FoldPadPass, FoldInputNormPass, CollapseLayoutPass, FuseLayerNormPass,
                                 FuseGeluPass, FuseSoftmaxPass, FuseOrtPass)}
REG = {**REGISTRY, **NEW}
#: The proposed ``lossless``: the current preset with the new passes inserted (what the final report asks
#: to write into passes/__init__.py): fold-pad before fold-bn, fold-input-norm after fold-affine, the layout
#: and transformer fusions before eliminate-identity (which removes the Identity nodes they leave).
def _with_new_passes(spec: str) -> str:
    names = spec.split(",")
    out = []
    for item in names:
        if item.startswith("fold-bn"):
            out.append("fold-pad")
        if item.startswith("eliminate-identity"):
            out.extend(["collapse-layout", "fuse-layernorm", "fuse-gelu", "fuse-softmax"])
        out.append(item)
        if item.startswith("fold-affine"):
            out.append("fold-input-norm")
    return ",".join(out)


LOSSLESS = _with_new_passes(PRESETS["lossless"])
PRESETS_NEW = {**PRESETS, "lossless-new": LOSSLESS}
LEVELS = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def run_spec(source, spec: str, shapes=None) -> bytes:
    """Optimize with ``spec`` (verified against the original) and return the serialized model."""
    passes = [p for p, _ in build_passes(spec, REG, PRESETS_NEW)]
    result = optimize(io.to_bytes(io.load(source)), passes=passes, input_shapes=shapes)
    return io.to_bytes(result.model)


THREADS = 0


def session(data: bytes, level: str = "all", save: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 3
    options.graph_optimization_level = LEVELS[level]
    if save:
        options.optimized_model_filepath = save
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def nodes(data: bytes) -> int:
    return len(onnx.load_from_string(data).graph.node)


def ort_nodes(data: bytes, level: str) -> int:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "o.onnx")
        session(data, level, save=path)
        return len(onnx.load(path, load_external_data=False).graph.node)


def interleaved(sessions: dict[str, ort.InferenceSession], feeds, rounds: int, runs: int) -> dict[str, float]:
    """Median over rounds of the mean per-run latency (ms); each round runs every session in turn."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for sess in sessions.values():  # warm-up
        for _ in range(3):
            sess.run(None, feeds)
    for round_index in range(rounds):
        order = list(sessions.items())
        if round_index % 2:
            order.reverse()
        for name, sess in order:
            start = time.perf_counter()
            for _ in range(runs):
                sess.run(None, feeds)
            times[name].append((time.perf_counter() - start) / runs * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def bert(rounds: int, runs: int) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    import models

    path = str(models.ensure("tiny_bert"))
    original = io.to_bytes(io.load(path))
    variants = {
        "original": original,
        "lossless": run_spec(path, "lossless-new"),
        "lossless+ort-offline": run_spec(path, "lossless-new,ort-offline{level=extended}"),
        "lossless+fuse-ort": run_spec(path, "lossless-new,fuse-ort"),
        "lossless+fuse-ort+ort-offline": run_spec(path, "lossless-new,fuse-ort,ort-offline{level=extended}"),
    }
    optimized = optimize_model(path, model_type="bert", num_heads=2, hidden_size=128)
    variants["ort-transformers-optimizer"] = optimized.model.SerializeToString()
    print("nodes in file:", {k: nodes(v) for k, v in variants.items()})
    for batch in (1, 8):
        feeds = {"input_ids": np.random.default_rng(0).integers(0, 100, (batch, 32)).astype(np.int64)}
        reference = session(original).run(None, feeds)
        sessions = {name: session(data) for name, data in variants.items()}
        for name, sess in sessions.items():
            diff = max(float(np.abs(a - b).max()) for a, b in zip(reference, sess.run(None, feeds), strict=True))
            print(f"  batch {batch} {name}: max |diff| vs original {diff:.2e}")
        result = interleaved(sessions, feeds, rounds, runs)
        base = result["original"]
        print(f"batch {batch} (ORT level all), median ms:")
        for name, ms in result.items():
            print(f"  {name:32s} {ms:8.3f}  ({base / ms:4.2f}x)")


def tf_style(data: bytes) -> bytes:
    """Explicit Pad before every padded Conv and ``(x - mean) / std`` in front, as TF/Keras exports look."""
    model = ir.from_proto(onnx.load_from_string(data))
    graph = model.graph
    counter = 0
    for node in list(graph):
        if node.op_type != "Conv" or "pads" not in node.attributes:
            continue
        pads = list(node.attributes["pads"].value)
        if not any(pads):
            continue
        half = len(pads) // 2
        full = [0, 0, *pads[:half], 0, 0, *pads[half:]]
        counter += 1
        pads_value = ir.Value(name=f"tf_pads_{counter}", shape=ir.Shape([len(full)]),
                              type=ir.TensorType(ir.DataType.INT64),
                              const_value=ir.tensor(np.array(full, np.int64), name=f"tf_pads_{counter}"))
        graph.register_initializer(pads_value)
        pad = ir.Node("", "Pad", [node.inputs[0], pads_value], name=f"tf_pad_{counter}")
        graph.insert_before(node, pad)
        node.replace_input_with(0, pad.outputs[0])
        node.attributes["pads"] = ir.AttrInt64s("pads", [0] * len(pads))
    image = graph.inputs[0]
    channels = image.shape[1]
    mean = np.linspace(0.4, 0.5, channels).reshape(1, channels, 1, 1).astype(np.float32)
    std = np.linspace(0.2, 0.3, channels).reshape(1, channels, 1, 1).astype(np.float32)
    users = list(image.uses())
    values = []
    for name, array in (("tf_mean", mean), ("tf_std", std)):
        value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.FLOAT),
                         const_value=ir.tensor(array, name=name))
        graph.register_initializer(value)
        values.append(value)
    sub = ir.Node("", "Sub", [image, values[0]], name="tf_sub")
    div = ir.Node("", "Div", [sub.outputs[0], values[1]], name="tf_div")
    graph.insert_before(next(iter(graph)), [sub, div])
    for use in users:
        use.node.replace_input_with(use.idx, div.outputs[0])
    return ir.to_proto(model).SerializeToString()


def conv(rounds: int, runs: int) -> None:
    import models
    from tests.helpers import LIGHT_MODELS

    sources = {name: io.to_bytes(io.load(models.ensure(name))) for name in ("resnet18", "mobilenetv2")}
    sources["digits_cnn"] = io.to_bytes(io.load(ROOT / "models" / "onnx" / "digits_cnn.onnx"))
    sources["light_resnet50"] = io.to_bytes(io.load(next(p for p in LIGHT_MODELS if "resnet50" in p.name)))
    sources["resnet18-tf-style"] = tf_style(sources["resnet18"])
    sources["mobilenetv2-tf-style"] = tf_style(sources["mobilenetv2"])
    for name, original in sources.items():
        variants = {"original": original, "lossless(old)": run_spec(original, "lossless"),
                    "lossless(new)": run_spec(original, "lossless-new")}
        spec = onnx.load_from_string(original).graph.input[0]
        dims = [d.dim_value or 1 for d in spec.type.tensor_type.shape.dim]
        feeds = {spec.name: np.random.default_rng(0).standard_normal(dims).astype(np.float32)}
        print(f"{name} input {dims}")
        print("  nodes in file:", {k: nodes(v) for k, v in variants.items()},
              " after ORT basic:", {k: ort_nodes(v, "basic") for k, v in variants.items()})
        for level in ("basic", "all"):
            result = interleaved({k: session(v, level) for k, v in variants.items()}, feeds, rounds, runs)
            print(f"  ORT {level:5s} ms: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=["bert", "conv"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    args = parser.parse_args()
    global THREADS
    THREADS = args.threads
    print("lossless (proposed):", LOSSLESS)
    {"bert": bert, "conv": conv}[args.suite](args.rounds, args.runs)


if __name__ == "__main__":
    main()
