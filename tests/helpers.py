"""Shared test helpers: tiny models from ONNX text, seeded weights, onnxruntime runs and tolerances.

All numeric tolerances of the suite live here.
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

# Lossless passes: outputs must match the original this closely (float32 re-association only).
EXACT_ATOL = 1e-4
EXACT_RTOL = 1e-3

ONNX_DATA = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data"
LIGHT_MODELS = sorted((ONNX_DATA / "light").glob("light_*.onnx"))


def seeded(shape, seed: int = 0, scale: float = 1.0, dtype=np.float32) -> np.ndarray:
    """Deterministic normal(0, scale) array."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def make_model(text: str, **initializers: np.ndarray) -> ir.Model:
    """Build a model from ONNX text, then attach (or replace) initializers by name."""
    model = ir.from_onnx_text(text)
    for name, array in initializers.items():
        tensor = ir.tensor(np.asarray(array), name=name)
        if name in model.graph.initializers:
            model.graph.initializers[name].const_value = tensor
        else:
            value = ir.Value(
                name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor
            )
            # Rewire uses of a graph value with this name (declared as an input or used by nodes).
            model.graph.register_initializer(value)
            for node in model.graph:
                for index, inp in enumerate(node.inputs):
                    if inp is not None and inp.name == name and inp is not value:
                        node.replace_input_with(index, value)
            model.graph.inputs[:] = [i for i in model.graph.inputs if i.name != name]
    return model


def to_bytes(model: ir.Model | bytes) -> bytes:
    if isinstance(model, bytes):
        return model
    from sftonnx import io

    return io.to_bytes(model)


def session(model: ir.Model | bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(to_bytes(model), options, providers=["CPUExecutionProvider"])


def random_feeds(model: ir.Model | bytes, seed: int = 0, dim: int = 2) -> dict[str, np.ndarray]:
    """Random inputs for every graph input (dynamic dims set to ``dim``)."""
    sess = session(model)
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else dim for d in inp.shape]
        if "float" in inp.type:
            dtype = np.float16 if "float16" in inp.type else np.float32
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif "int64" in inp.type:
            feeds[inp.name] = rng.integers(0, 4, shape).astype(np.int64)
        elif "int32" in inp.type:
            feeds[inp.name] = rng.integers(0, 4, shape).astype(np.int32)
        elif "bool" in inp.type:
            feeds[inp.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            raise NotImplementedError(inp.type)
    return feeds


def run_ort(model: ir.Model | bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = session(model)
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def assert_same_outputs(
    original: ir.Model | bytes,
    optimized: ir.Model | bytes,
    seed: int = 0,
    atol: float = EXACT_ATOL,
    rtol: float = EXACT_RTOL,
) -> None:
    """Both models give the same outputs (within the lossless tolerance) on seeded random inputs."""
    feeds = random_feeds(original, seed)
    expected = run_ort(original, feeds)
    actual = run_ort(optimized, feeds)
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual, strict=False):
        assert e.shape == a.shape, (e.shape, a.shape)
        np.testing.assert_allclose(a, e, atol=atol, rtol=rtol)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denominator) if denominator else float(np.allclose(a, b))


def assert_within_budget(
    original: ir.Model | bytes, optimized: ir.Model | bytes, *, min_cosine: float, seed: int = 0
) -> None:
    """Lossy passes: every output keeps at least ``min_cosine`` similarity to the original."""
    feeds = random_feeds(original, seed)
    for e, a in zip(run_ort(original, feeds), run_ort(optimized, feeds), strict=False):
        assert e.shape == a.shape
        assert cosine(e, a) >= min_cosine, cosine(e, a)


def op_types(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


def run_cli(*args, cwd=None, timeout: int = 300):
    """Run ``sftonnx ARGS...`` in a subprocess (the installed CLI module), capturing text output."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "sftonnx.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def assert_clean_error(result, code: int, message: str) -> None:
    """A failed CLI run: the documented exit code, exactly one ``error:`` line on stderr, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
