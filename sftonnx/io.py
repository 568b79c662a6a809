"""Model IO: the only boundary between ``onnx.ModelProto`` / files and the ``onnx_ir`` model.

Loading accepts a path (with external data next to it), raw bytes or a ``ModelProto`` and validates what
sftonnx and onnxruntime need (a graph, known operator domains, a supported opset). Saving is atomic: the
model and its external-data file are written to temporary names in the destination folder and renamed
into place only once complete, so a failed run never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import tempfile
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from sftonnx.errors import InputError
from sftonnx.ir_utils import all_graphs

__all__ = [
    "KNOWN_DOMAINS",
    "LARGE_MODEL_BYTES",
    "MAX_OPSET",
    "MIN_OPSET",
    "PROTOBUF_LIMIT",
    "ModelSource",
    "copy_model",
    "external_data_size",
    "external_tensors",
    "has_external_data",
    "load",
    "model_nbytes",
    "needs_file",
    "release_mapped",
    "release_mapped_value",
    "save",
    "structure_proto",
    "to_bytes",
]

logger = logging.getLogger(__name__)

ModelSource = str | os.PathLike | bytes | onnx.ModelProto | ir.Model

#: Serialized protobuf messages cannot exceed 2 GiB; leave headroom for the graph itself.
PROTOBUF_LIMIT = 2**31 - 64 * 2**20
#: Models with more weight bytes than this go to onnxruntime and the checks as files (see :func:`needs_file`).
LARGE_MODEL_BYTES = 256 * 2**20
#: Operator domains onnxruntime's CPU build implements (plus the default-domain aliases).
KNOWN_DOMAINS = frozenset(
    {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "ai.onnx.preview.training"}
)
#: Oldest default-domain opset onnxruntime still runs.
MIN_OPSET = 7
#: Newest default-domain opset the installed onnx knows (onnxruntime may lag a release behind).
MAX_OPSET = onnx.defs.onnx_opset_version()


def load(
    source: ModelSource, *, base_dir: str | os.PathLike | None = None, validate: bool = True
) -> ir.Model:
    """Load a model as an ``onnx_ir.Model``.

    Args:
        source: A file path, serialized bytes, an ``onnx.ModelProto`` or an ``onnx_ir.Model`` (returned as is,
            but for the dimension clean-up below).
        base_dir: Folder holding external data for a bytes/``ModelProto`` source (defaults to the file's folder;
            for bytes and protos, to the working folder at load time). It is made absolute here, so that
            nothing later depends on the working folder.
        validate: Check that the model has a graph, known domains and a supported opset, that its external
            data files exist and that it can be serialized again (every later step serializes it).

    Declared dimensions ``<= 0`` (Paddle writes a dynamic batch as ``dim_value: -1``) on graph inputs, outputs
    and intermediate values (value_info) of every graph, subgraph and function become unnamed dynamic
    dimensions: nothing downstream may take them as sizes.

    Raises:
        InputError: The file is missing, not an ONNX model, truncated, uses what onnxruntime cannot run, lacks
            its external data, or holds fields that cannot be serialized (a mutated or hand-edited protobuf).
    """
    if isinstance(source, ir.Model):
        model = source
    elif isinstance(source, (bytes, bytearray, memoryview)):
        model = _from_proto(_parse(bytes(source), "<bytes>"), _absolute(base_dir or "."))
    elif isinstance(source, onnx.ModelProto):
        model = _from_proto(source, _absolute(base_dir or "."))
    elif isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source)
        if not path.exists():
            raise InputError(f"model file not found: {path}")
        if path.is_dir():
            raise InputError(f"expected an .onnx file, got a directory: {path}")
        try:
            data = path.read_bytes()
        except OSError as error:
            raise InputError(f"cannot read {path}: {error.strerror or error}") from None
        # Absolute: external data must not depend on the working folder of whatever reads it later.
        model = _from_proto(_parse(data, str(path)), pathlib.Path(base_dir or path.parent).resolve())
    else:
        raise InputError(f"cannot load a model from {type(source).__name__}")
    _unknown_nonpositive_dims(model)
    if validate:
        _validate(model)
        _check_external_data(model)
        _check_serializable(model)
    return model


def _absolute(folder: str | os.PathLike) -> pathlib.Path:
    """Relative external-data folders are resolved once, at load time (later reads may run anywhere)."""
    return pathlib.Path(folder).resolve()


def _parse(data: bytes, label: str) -> onnx.ModelProto:
    if not data:
        raise InputError(f"{label} is empty, not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise InputError(f"{label} is not a valid ONNX model (protobuf parse failed: {error})") from None
    # Protobuf parses many non-ONNX byte strings without complaint: insist on what every model has.
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.opset_import:
        raise InputError(f"{label} is not an ONNX model (no graph, IR version or opset import)")
    return proto


def _from_proto(proto: onnx.ModelProto, base_dir: str | os.PathLike | None) -> ir.Model:
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as error:  # onnx-ir rejects malformed graphs with assorted exception types
        raise InputError(f"cannot read the model graph: {error}") from None
    if base_dir is not None:
        ir.external_data.set_base_dir(model.graph, base_dir)
        for function in model.functions.values():
            ir.external_data.set_base_dir(function, base_dir)  # type: ignore[arg-type]
    return model


def _unknown_nonpositive_dims(model: ir.Model) -> None:
    """Replace declared dimensions ``<= 0`` by unnamed symbolic ones (initializer shapes are their tensors')."""
    changed = 0
    for graph in all_graphs(model):
        values = [*graph.inputs, *graph.outputs, *(v for node in graph for v in node.outputs)]
        for value in values:
            shape = value.shape
            if value.is_initializer() or shape is None:
                continue
            if any(isinstance(dim, int) and dim <= 0 for dim in shape):
                value.shape = ir.Shape(
                    [ir.SymbolicDim(None) if isinstance(dim, int) and dim <= 0 else dim for dim in shape]
                )
                changed += 1
    if changed:
        logger.debug("%d declared shapes had dimensions <= 0; read as dynamic", changed)


def _validate(model: ir.Model) -> None:
    graph = model.graph
    if len(graph) == 0 and not graph.outputs:
        raise InputError("model graph is empty (no nodes, no outputs)")
    if not graph.outputs:
        raise InputError("model graph has no outputs")
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if opset is None:
        raise InputError("model imports no default-domain (ai.onnx) opset")
    if opset < MIN_OPSET:
        raise InputError(
            f"opset {opset} is too old: onnxruntime runs opset {MIN_OPSET} and newer "
            "(convert it first with onnx.version_converter)"
        )
    if opset > MAX_OPSET:
        raise InputError(f"opset {opset} is newer than the installed onnx supports (<= {MAX_OPSET})")
    local = {f.domain for f in model.functions.values()}
    for node in ir.traversal.RecursiveGraphIterator(graph):
        if node.domain not in KNOWN_DOMAINS and node.domain not in local:
            raise InputError(
                f"node '{node.name or node.op_type}' uses operator {node.domain}::{node.op_type}: "
                f"domain '{node.domain}' is not one onnxruntime implements"
            )


def _check_external_data(model: ir.Model) -> None:
    """Every external tensor's file exists and holds the bytes the tensor needs (data itself is not read)."""
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            tensor = value.const_value
            if not isinstance(tensor, ir.ExternalTensor):
                continue
            path = pathlib.Path(tensor.path)
            if not path.is_file():
                raise InputError(
                    f"external data of tensor '{value.name}' not found: {tensor.location} "
                    f"(looked in {pathlib.Path(tensor.base_dir or '.').resolve()})"
                )
            end = (tensor.offset or 0) + (tensor.length if tensor.length is not None else tensor.nbytes)
            size = path.stat().st_size
            if size < end:
                raise InputError(
                    f"external data of tensor '{value.name}' is truncated: {tensor.location} has {size} bytes, "
                    f"the tensor needs bytes up to {end}"
                )


def _check_serializable(model: ir.Model) -> None:
    """Serialize the model's structure once, so that a field the serializer rejects is a clear input error.

    onnx-ir reads some malformed fields without complaint (an attribute of type UNDEFINED, say) and fails only
    when writing them; without this check that surfaces later as an internal error. Tensor data is not copied
    (initializers are skipped; Constant nodes and subgraphs are serialized with their node).
    """
    parts: list[tuple[str, object]] = [("graph input", value) for value in model.graph.inputs]
    parts += [("graph output", value) for value in model.graph.outputs]
    parts += [("node", node) for node in model.graph]
    parts += [("function", function) for function in model.functions.values()]
    for kind, part in parts:
        try:
            if isinstance(part, ir.Node):
                ir.serde.serialize_node(part)
            elif isinstance(part, ir.Function):
                ir.serde.serialize_function(part)
            else:
                ir.serde.serialize_value(part)  # type: ignore[arg-type]
        except Exception as error:  # onnx-ir wraps assorted errors in SerdeError
            name = getattr(part, "name", None) or getattr(part, "op_type", "?")
            raise InputError(f"the model cannot be serialized: {kind} '{name}': {_root_cause(error)}") from None


def _root_cause(error: BaseException) -> str:
    """The innermost exception's first line (onnx-ir's SerdeError repeats the whole node in its message)."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def model_nbytes(model: ir.Model) -> int:
    """Bytes of all initializer data (graph and subgraphs); the bulk of a serialized model."""
    total = 0
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            if value.const_value is not None:
                total += value.const_value.nbytes
    return total


def external_tensors(model: ir.Model) -> Iterator[tuple[ir.Value, ir.ExternalTensor]]:
    """``(initializer, tensor)`` for every initializer (graph and subgraphs) whose data lives in a file."""
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                yield value, value.const_value


def external_data_size(model: ir.Model) -> int:
    """Bytes of the distinct external data files ``model`` reads from."""
    files = {pathlib.Path(tensor.path).resolve() for _, tensor in external_tensors(model)}
    return sum(path.stat().st_size for path in files if path.is_file())


def release_mapped(model: ir.Model) -> None:
    """Unmap the external tensors' files: pages a pass read stop counting in this process's memory.

    Tensors map their file again when next read. A tensor whose array is still referenced elsewhere stays
    mapped (closing it would invalidate that array).
    """
    for _, tensor in external_tensors(model):
        try:
            tensor.release()
        except BufferError:  # a numpy view of the mapping is alive
            continue


def release_mapped_value(value: ir.Value | None) -> None:
    """:func:`release_mapped` for one initializer (no-op unless its tensor is external and unreferenced)."""
    tensor = value.const_value if value is not None else None
    if isinstance(tensor, ir.ExternalTensor):
        try:
            tensor.release()
        except BufferError:
            pass


def has_external_data(model: ir.Model) -> bool:
    """Whether some initializer's data is read from an external file (memory-mapped, not loaded)."""
    return next(external_tensors(model), None) is not None


def needs_file(model: ir.Model) -> bool:
    """Whether onnxruntime and the structure checks should get ``model`` as a file rather than as bytes.

    True for models whose weights are in external files, and for models over :data:`LARGE_MODEL_BYTES`:
    serializing those to bytes would copy every weight into memory twice (proto, then bytes) before
    onnxruntime makes its own copy. Small models saved with external data take the same path, which is how
    the tests cover it cheaply.
    """
    return has_external_data(model) or model_nbytes(model) > LARGE_MODEL_BYTES


def copy_model(model: ir.Model) -> ir.Model:
    """A structural copy of ``model`` whose initializers share ``model``'s tensor objects.

    For passes that rewrite a copy and adopt it: weights are neither duplicated nor detached from their files
    (a serialize/deserialize round trip alone would leave external tensors without their folder, to be looked
    up in the working folder, and would copy in-memory ones).
    """
    copy = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    originals: dict[str, ir.TensorProtocol] = {}
    for graph in (model.graph, *model.graph.subgraphs()):
        for name, value in graph.initializers.items():
            if value.const_value is not None:
                originals.setdefault(name, value.const_value)
    for graph in (copy.graph, *copy.graph.subgraphs()):
        for name, value in graph.initializers.items():
            original, tensor = originals.get(name), value.const_value
            if original is not None and tensor is not None and (original.dtype, original.shape) == (
                tensor.dtype,
                tensor.shape,
            ):
                value.const_value = original
    return copy


def to_bytes(model: ir.Model) -> bytes:
    """Serialize a model that fits in one protobuf message (external data read in; ``model`` is not changed).

    Raises:
        InputError: The model exceeds protobuf's 2 GiB limit (save it to a file with external data instead).
    """
    if model_nbytes(model) > PROTOBUF_LIMIT:
        raise InputError(
            "model exceeds protobuf's 2 GiB limit; it can only be handled as a file with external data"
        )
    # Bytes must be self-contained: external tensors are swapped for in-memory views of their (memory-mapped)
    # data while serializing, then put back, so the model keeps reading its weights from the files.
    swapped = list(external_tensors(model))
    try:
        for value, tensor in swapped:
            value.const_value = ir.Tensor(tensor.numpy(), dtype=tensor.dtype, name=tensor.name)
        return ir.to_proto(model).SerializeToString()
    finally:
        for value, tensor in swapped:
            value.const_value = tensor


def structure_proto(model: ir.Model, *, max_inline_bytes: int = 0) -> tuple[onnx.ModelProto, list[str]]:
    """A ``ModelProto`` of ``model`` whose large weights are graph inputs: the graph without its bulk.

    For tools that need the structure only (onnx checker, shape inference, onnxsim's graph rewrites) on models
    whose weights are large or external: no large weight is read or copied, and the proto has no external
    references, so nothing depends on where the data files are or on the working folder. Main-graph
    initializers larger than ``max_inline_bytes`` become graph inputs of the same name, type and shape;
    smaller ones stay inline (external ones read in). ``model`` is unchanged afterwards.

    Returns:
        The proto and the names of the initializers turned into inputs (in order).
    """
    graph = model.graph
    moved: list[tuple[ir.Value, ir.TensorProtocol]] = []
    inlined: list[tuple[ir.Value, ir.TensorProtocol]] = []
    for value in list(graph.initializers.values()):
        tensor = value.const_value
        if tensor is None:
            continue
        if tensor.nbytes > max_inline_bytes and value not in graph.inputs and not value.is_graph_output():
            moved.append((value, tensor))
    inlined = [(v, t) for v, t in external_tensors(model) if all(v is not m for m, _ in moved)]
    inputs_before = list(graph.inputs)
    order = list(graph.initializers.values())
    detached: list[tuple[ir.Value, ir.TensorProtocol]] = []
    try:
        for value, tensor in inlined:
            value.const_value = ir.Tensor(tensor.numpy(), dtype=tensor.dtype, name=tensor.name)
        for value, tensor in moved:
            graph.initializers.pop(value.name)  # type: ignore[arg-type]
            value.const_value = None
            value.type = value.type or ir.TensorType(tensor.dtype)
            value.shape = value.shape or ir.Shape(tensor.shape)
            detached.append((value, tensor))
            graph.inputs.append(value)
        proto = ir.to_proto(model)
    finally:
        graph.inputs[:] = inputs_before
        for value, tensor in detached:
            value.const_value = tensor
        if detached:  # back in their original order (the order they are written in)
            graph.initializers.clear()
            for value in order:
                graph.register_initializer(value)
        for value, tensor in inlined:
            value.const_value = tensor
    return proto, [value.name or "" for value, _ in moved]


def save(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    overwrite: bool = True,
    size_threshold_bytes: int = 1024,
) -> pathlib.Path:
    """Write ``model`` to ``path`` atomically.

    With external data, weights are streamed tensor by tensor into ``<name>.data`` beside the model (a
    relative location; external tensors are copied file to file, never loaded whole). Afterwards the model's
    externalized initializers read from the file just written, so ``model`` stays valid even when that file
    replaced the one it was read from (saving over the input).

    Args:
        model: The model to write.
        path: Destination ``.onnx`` file.
        external_data: ``True`` writes tensors over ``size_threshold_bytes`` to ``<name>.data`` beside the model;
            ``None`` (default) does so only when the model would exceed protobuf's 2 GiB limit.
        overwrite: Allow replacing an existing file.
        size_threshold_bytes: Smallest tensor moved to external data.

    Returns:
        The path written.

    Raises:
        InputError: The destination exists and ``overwrite`` is false, or its folder does not exist.
    """
    path = pathlib.Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"output file exists: {path} (pass --overwrite to replace it)")
    if not path.parent.exists():
        raise InputError(f"output folder does not exist: {path.parent}")
    if external_data is None:
        external_data = model_nbytes(model) > PROTOBUF_LIMIT
    data_name = path.name + ".data"
    with _staging(path.parent) as staging:
        staged_model = staging / path.name
        if external_data:
            written: dict[int, int] = {}  # id(tensor) -> offset in the new data file

            def record(tensor: ir.TensorProtocol, info: ir.external_data.CallbackInfo) -> None:
                written[id(tensor)] = info.offset

            # Written into the staging folder: a tensor may still read from the data file being replaced.
            ir.save(
                model, staged_model, external_data=data_name, size_threshold_bytes=size_threshold_bytes, callback=record
            )
            os.replace(staging / data_name, path.parent / data_name)
            _point_to(model, written, path.parent.resolve(), data_name)
        else:
            staged_model.write_bytes(to_bytes(model))
        os.replace(staged_model, path)
    logger.debug("saved %s (external data: %s)", path, external_data)
    return path


def _point_to(model: ir.Model, written: dict[int, int], folder: pathlib.Path, data_name: str) -> None:
    """Make the initializers just written to ``folder/data_name`` read from there (memory-mapped)."""
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is None or id(tensor) not in written:
                continue
            value.const_value = ir.ExternalTensor(
                data_name,
                written[id(tensor)],
                tensor.nbytes,
                tensor.dtype,
                shape=ir.Shape(tensor.shape),
                name=tensor.name or value.name or "",
                base_dir=folder,
            )


def _load_external_tensors(model: ir.Model) -> None:
    """Read every external tensor into memory (for a model whose data files are about to disappear)."""
    for value, tensor in list(external_tensors(model)):
        value.const_value = ir.Tensor(np.array(tensor.numpy()), dtype=tensor.dtype, name=tensor.name)


@contextlib.contextmanager
def _staging(folder: pathlib.Path) -> Iterator[pathlib.Path]:
    """A temporary folder next to the destination, so that the final rename is atomic (same filesystem)."""
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".sftonnx-", dir=folder))
    try:
        yield staging
    finally:
        for child in staging.iterdir():
            child.unlink()
        staging.rmdir()
