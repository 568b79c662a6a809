"""Issue 16: the two exports of the nsfw classifier, interleaved on one recipe input, one thread.

Usage::

    python benchmarks/layout_nsfw.py TF_MAIN TORCH_MAIN TF_OURS TORCH_OURS [--runs 80]

(the optimized models, e.g. from benchmarks/layout_corpus.py). Prints the median latency of the two originals and
the four optimized models, and the torch/tf latency ratio at each stage.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

import onnxruntime as ort

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from layout_corpus import runner  # noqa: E402

from sftonnx.timing import interleaved_runs  # noqa: E402
from tests.corpus.conftest import N_VERIFY, SEED_VERIFY, recipe_samples  # noqa: E402
from tests.corpus.fetch import model_path  # noqa: E402
from tests.corpus.manifest import BY_ID  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tf_main")
    parser.add_argument("torch_main")
    parser.add_argument("tf_ours")
    parser.add_argument("torch_ours")
    parser.add_argument("--runs", type=int, default=80)
    args = parser.parse_args()
    tf, torch = BY_ID["opennsfw_tf"], BY_ID["opennsfw_torch"]
    paths = {"tf orig": model_path(tf), "torch orig": model_path(torch), "tf main": args.tf_main,
             "torch main": args.torch_main, "tf ours": args.tf_ours, "torch ours": args.torch_ours}
    image = next(iter(recipe_samples(tf, N_VERIFY, SEED_VERIFY)[0].values()))[:1]
    runners = []
    for path in paths.values():
        input_name = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
        runners.append(runner(path, {input_name: image}))
    series = interleaved_runs(runners, runs=args.runs, alternate=True)
    ms = {name: statistics.median(s.times) * 1e3 for name, s in zip(paths, series, strict=True)}
    for name, value in ms.items():
        print(f"{name:11s} {value:7.2f} ms")
    for stage in ("orig", "main", "ours"):
        print(f"torch/tf {stage}: {ms['torch ' + stage] / ms['tf ' + stage]:.3f}")


if __name__ == "__main__":
    main()
