"""Helpers shared by the fusion pass tests (tolerances stay in tests/helpers.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort


def bind_initializers(model: ir.Model, *, keep_as_input: bool = False, **arrays: np.ndarray) -> ir.Model:
    """Give graph inputs named in ``arrays`` those contents as initializers.

    The same ``Value`` becomes the initializer, so uses inside subgraphs stay connected (``make_model``
    rewires top-level nodes only). With ``keep_as_input`` it also stays a graph input: an overridable
    default in IR >= 4.
    """
    for name, array in arrays.items():
        value = next(v for v in model.graph.inputs if v.name == name)
        if not keep_as_input:
            model.graph.inputs.remove(value)
        value.const_value = ir.tensor(np.asarray(array), name=name)
        model.graph.register_initializer(value)
    return model


def all_op_types(model: ir.Model) -> list[str]:
    """Op types of every node, subgraphs included, in traversal order."""
    return [node.op_type for node in ir.traversal.RecursiveGraphIterator(model.graph)]


def check_model(model: ir.Model) -> None:
    """The onnx checker (full) and strict shape inference accept the model."""
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)


def positive_variance(shape, seed: int, dtype=np.float32) -> np.ndarray:
    """BatchNormalization running variance: positive, seeded."""
    return (np.abs(np.random.default_rng(seed).standard_normal(shape)) + 0.5).astype(dtype)


def run_unoptimized(model: ir.Model | bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run on CPU with onnxruntime's graph optimizations off (it would fold Conv+BN by itself)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model if isinstance(model, bytes) else ir.to_proto(model).SerializeToString()
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})


def randomize_weights(model: ir.Model, seed: int = 0) -> ir.Model:
    """Give every Conv/Gemm weight that is a ConstantOfShape output seeded values (scaled by 1/sqrt(fan-in)).

    The new tensors are initializers listed as graph inputs too, as IR < 4 (onnx's light models) requires.
    """
    rng = np.random.default_rng(seed)
    for node in list(model.graph):
        if node.op_type not in ("Conv", "Gemm"):
            continue
        weight = node.inputs[1]
        producer = weight.producer()
        if producer is None or producer.op_type != "ConstantOfShape":
            continue
        shape = tuple(int(d) for d in producer.inputs[0].const_value.numpy())
        array = (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)
        name = f"{weight.name}_random"
        value = ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(ir.DataType.FLOAT),
                         const_value=ir.tensor(array, name=name))
        model.graph.register_initializer(value)
        if model.ir_version < 4:
            model.graph.inputs.append(value)
        node.replace_input_with(1, value)
    return model


def assert_fused(model: ir.Model, pass_, changes: dict[str, int], ops: list[str]) -> None:
    """The pass rewrote exactly ``changes``, skipped nothing, left ``ops``, a valid model and the same outputs."""
    from tests.helpers import assert_same_outputs, op_types

    original = ir.to_proto(model).SerializeToString()
    report = pass_(model)
    assert dict(report.changes) == changes
    assert not report.skipped
    assert op_types(model) == ops
    check_model(model)
    assert_same_outputs(original, model)


def assert_unchanged(model: ir.Model, pass_, skips: dict[str, int]) -> None:
    """The pass changed nothing and gave exactly the ``skips`` reasons."""
    text = ir.to_onnx_text(model)
    report = pass_(model)
    assert not report.modified and not report.changes
    assert dict(report.skipped) == skips
    assert ir.to_onnx_text(model) == text
