"""Train the digits CNN on scikit-learn's bundled 8x8 digits and export it with its test and calibration data.

``python -m models.digits [--out-dir models/onnx]`` writes

- ``digits_cnn.onnx``: ``SmallCNN(in_channels=1, image_size=8)``, dynamic batch, exported unoptimized
  like the rest of the zoo;
- ``digits_test.npz``: the stratified 30% held-out split, key ``input`` (float32 [N, 1, 8, 8], pixels
  scaled to [0, 1]) and key ``labels`` (int64 [N]);
- ``digits_calib.npz``: 200 training images (stratified), key ``input`` only, for calibrating lossy passes.

Everything is seeded, trained on one thread with deterministic algorithms, and the npz files are written
with fixed zip timestamps, so a rerun on the same software stack reproduces the files bit for bit. Training
takes a few seconds on a laptop CPU; test accuracy is about 98%.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import pathlib
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence

import numpy as np
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import models
from models import export, nets

__all__ = [
    "CALIB_FILE",
    "INPUT_NAME",
    "MODEL_FILE",
    "TEST_FILE",
    "DigitsResult",
    "load_split",
    "main",
    "save_npz",
    "train_and_export",
]

MODEL_FILE = f"{models.DIGITS}.onnx"
TEST_FILE = "digits_test.npz"
CALIB_FILE = "digits_calib.npz"
INPUT_NAME = "input"
CALIB_SIZE = 200
TEST_FRACTION = 0.3


@dataclasses.dataclass(frozen=True)
class DigitsResult:
    """Files written by :func:`train_and_export` and the accuracies measured on the test split.

    Attributes:
        model_path: The ONNX model.
        test_path: Held-out images and labels.
        calib_path: Calibration images.
        torch_accuracy: Test accuracy of the torch model.
        onnx_accuracy: Test accuracy of the ONNX model in onnxruntime.
    """

    model_path: pathlib.Path
    test_path: pathlib.Path
    calib_path: pathlib.Path
    torch_accuracy: float
    onnx_accuracy: float


def load_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split the bundled digits (no download) 70/30, stratified, and pick the calibration images.

    Args:
        seed: ``random_state`` of both stratified splits.

    Returns:
        ``(x_train, y_train, x_test, y_test, x_calib)``; images float32 [N, 1, 8, 8] in [0, 1], labels int64.
    """
    data, target = load_digits(return_X_y=True)
    images = (data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    labels = target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=seed
    )
    x_calib, _ = train_test_split(x_train, train_size=CALIB_SIZE, stratify=y_train, random_state=seed)
    return x_train, y_train, x_test, y_test, x_calib


def save_npz(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> pathlib.Path:
    """Write an uncompressed ``.npz`` that ``np.load`` reads, byte-identical for identical arrays.

    ``np.savez`` stamps each member with the current time; this writes the same layout with a fixed
    timestamp, atomically.

    Args:
        path: Destination file.
        arrays: Key to array, written in the given order.

    Returns:
        The written path.
    """
    path = pathlib.Path(path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for key, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    _write_atomic(path, buffer.getvalue())
    return path


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _batches(size: int, batch: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(size, generator=generator)
    yield from order.split(batch)


def _train(x_train: np.ndarray, y_train: np.ndarray, *, seed: int, epochs: int, batch: int) -> nn.Module:
    torch.manual_seed(seed)
    module = nets.SmallCNN(in_channels=1, image_size=8, num_classes=10, channels=64)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    images, labels = torch.from_numpy(x_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(seed)
    module.train()
    for _ in range(epochs):
        for index in _batches(len(images), batch, generator):
            optimizer.zero_grad()
            loss_fn(module(images[index]), labels[index]).backward()
            optimizer.step()
    return module.eval()


def _onnx_predict(path: pathlib.Path, images: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {INPUT_NAME: images})
    return logits.argmax(axis=1)


def train_and_export(
    out_dir: str | os.PathLike[str] = models.DEFAULT_OUT_DIR,
    *,
    opset: int = models.DEFAULT_OPSET,
    seed: int = 0,
    epochs: int = 20,
    batch: int = 32,
) -> DigitsResult:
    """Train the digits CNN and write the model, test and calibration files into ``out_dir``.

    Runs torch on one thread with deterministic algorithms and restores both settings afterwards.

    Args:
        out_dir: Output directory (created if needed).
        opset: Target opset of the export.
        seed: Seed of the splits, the weight init and the batch order.
        epochs: Passes over the training split.
        batch: Mini-batch size.

    Returns:
        Paths of the three files and the torch and onnxruntime test accuracies.

    Raises:
        RuntimeError: If the torch and onnxruntime predictions disagree on the test split.
    """
    out_dir = pathlib.Path(out_dir)
    x_train, y_train, x_test, y_test, x_calib = load_split(seed)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        module = _train(x_train, y_train, seed=seed, epochs=epochs, batch=batch)
        with torch.no_grad():
            torch_predictions = module(torch.from_numpy(x_test)).argmax(dim=1).numpy()
        model_path = export.export_module(
            module,
            (torch.from_numpy(x_test[:2]),),
            out_dir / MODEL_FILE,
            input_names=[INPUT_NAME],
            output_names=["logits"],
            opset=opset,
        )
        export.check(model_path, module, [(torch.from_numpy(x_test[:n]),) for n in (1, 3)])
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    onnx_predictions = _onnx_predict(model_path, x_test)
    if not np.array_equal(torch_predictions, onnx_predictions):
        mismatches = int(np.sum(torch_predictions != onnx_predictions))
        raise RuntimeError(f"{model_path}: onnxruntime and torch disagree on {mismatches} test images")
    test_path = save_npz(out_dir / TEST_FILE, {INPUT_NAME: x_test, "labels": y_test})
    calib_path = save_npz(out_dir / CALIB_FILE, {INPUT_NAME: x_calib})
    return DigitsResult(
        model_path,
        test_path,
        calib_path,
        float(np.mean(torch_predictions == y_test)),
        float(np.mean(onnx_predictions == y_test)),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; prints the files written and both test accuracies."""
    parser = argparse.ArgumentParser(prog="python -m models.digits", description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=pathlib.Path, default=models.DEFAULT_OUT_DIR)
    parser.add_argument("--opset", type=int, default=models.DEFAULT_OPSET)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)
    export.quiet_exporter()
    result = train_and_export(args.out_dir, opset=args.opset, seed=args.seed, epochs=args.epochs)
    for path in (result.model_path, result.test_path, result.calib_path):
        print(f"wrote {path} ({path.stat().st_size / 1e3:.1f} kB)")
    print(f"test accuracy: torch {result.torch_accuracy:.4f}  onnxruntime {result.onnx_accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
