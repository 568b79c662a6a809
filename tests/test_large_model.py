"""A model over 2 GiB, end to end (marked ``large``: about 4.7 GB of disk, deselected by default).

Issue 15's MLP (three MatMul+Relu layers, 2.3 GB of float32 weights in one external-data file) is generated
in the test's folder, optimized by the CLI run from the model's own folder with relative paths (the case that
used to fail), with the default preset and with int8-dynamic, and removed afterwards. Each run must verify,
write ``<output>.data`` beside the output, and stay within the memory bound of issue 15: peak resident memory
of the CLI process at most 1.5x the model's size plus 1 GB.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from models.large import write_mlp

pytestmark = [pytest.mark.large, pytest.mark.slow]

GB = 1e9


def _peak_rss_of(command: list[str], cwd) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``command`` as a child process; returns the result and the child's peak resident memory in bytes."""
    script = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stdout.write(done.stdout); sys.stderr.write(done.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(done.returncode)\n"
    )
    # A wrapper process of its own: RUSAGE_CHILDREN then covers the CLI run only.
    done = subprocess.run([sys.executable, "-c", script, *command], cwd=cwd, capture_output=True, text=True)
    peak_kb = int(done.stderr.strip().splitlines()[-1])
    return done, peak_kb * 1024


def _sha_head(path, size=1 << 20) -> str:
    with open(path, "rb") as file:
        return hashlib.sha256(file.read(size)).hexdigest()


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large")
    if shutil.disk_usage(folder).free < 8 * GB:
        pytest.skip("needs about 8 GB of free disk (the model, its optimized copy and a verification copy)")
    path = write_mlp(folder / "big.onnx")
    yield path
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("preset", ["lossless", "int8-dynamic"])
def test_model_over_2gb_optimizes_from_its_folder_within_memory_bound(big_model, preset):
    folder = big_model.parent
    data = folder / "big.onnx.data"
    size = big_model.stat().st_size + data.stat().st_size
    assert size > 2**31
    before = (data.stat().st_size, data.stat().st_mtime_ns, _sha_head(data))
    np.savez(folder / "x.npz", x=np.random.default_rng(3).standard_normal((2, 12000)).astype(np.float32))
    output = f"big.{preset}.onnx"
    cli = [sys.executable, "-c", "from sftonnx.cli import main; main()"]
    command = [*cli, "optimize", "big.onnx", output, "--preset", preset]
    if preset != "lossless":
        command += ["--data", "x.npz"]
    try:
        done, peak = _peak_rss_of(command, cwd=folder)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "verified" in done.stdout
        assert peak <= 1.5 * size + 1 * GB, f"peak RSS {peak / GB:.2f} GB for a {size / GB:.2f} GB model"
        written = folder / output
        proto = onnx.load(str(written), load_external_data=False)
        locations = {
            entry.value
            for tensor in proto.graph.initializer
            for entry in tensor.external_data
            if entry.key == "location"
        }
        assert locations == {f"{output}.data"}
        assert (data.stat().st_size, data.stat().st_mtime_ns, _sha_head(data)) == before
        assert not [p for p in os.listdir(folder) if p.startswith(".sftonnx-")]  # no staging left behind
    finally:
        for leftover in (folder / output, folder / f"{output}.data"):
            leftover.unlink(missing_ok=True)
