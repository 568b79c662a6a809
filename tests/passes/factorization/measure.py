"""Measure factorize-conv / factorize-gemm on the model zoo: MACs, params, CPU latency, accuracy/cosine.

Not a test (pytest does not collect it). Run from the repo root::

    python -m tests.passes.factorization.measure digits resnet18 tiny_bert

The base model is the ``lossless`` preset's output (BN folded into Conv, shapes folded), as in a
``lossless,factorize-conv{...}`` pipeline. Latency: one onnxruntime CPU session per model (all graph
optimizations, ``--threads`` intra-op threads), original and candidate timed interleaved (A, B, A, B,
...) after a warm-up; the ratio is the median of per-round ratios, which cancels most of the noise from
other load on the machine.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

import numpy as np

from sftonnx import api, io
from sftonnx.analysis import UNKNOWN_SHAPE, count_macs, parameter_stats
from sftonnx.passes.factorization import FactorizeConvPass, FactorizeGemmPass
from sftonnx.verify import Budget, make_session

MODELS = pathlib.Path(__file__).resolve().parents[3] / "models" / "onnx"


def macs_of(model) -> int:
    return int(sum(v for k, v in count_macs(model).items() if k != UNKNOWN_SHAPE))


def latency_ratio(base: bytes, candidate: bytes, feed: dict, *, rounds: int, threads: int) -> float:
    sessions = [make_session(base, threads=threads), make_session(candidate, threads=threads)]
    for session in sessions:
        for _ in range(10):
            session.run(None, feed)
    ratios = []
    for _ in range(rounds):
        times = []
        for session in sessions:
            start = time.perf_counter()
            for _ in range(5):
                session.run(None, feed)
            times.append(time.perf_counter() - start)
        ratios.append(times[1] / times[0])
    return statistics.median(ratios)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def evaluate(name: str, configs, *, rounds: int, threads: int) -> None:
    if name == "digits":
        path = MODELS / "digits_cnn.onnx"
        test = np.load(MODELS / "digits_test.npz")
        eval_feeds = {"input": test["input"]}
        labels = test["labels"]
        calibration = str(MODELS / "digits_calib.npz")
        timing_feed = {"input": test["input"][:1]}
    else:
        import models

        path = models.ensure(name)
        rng = np.random.default_rng(1234)
        if name == "tiny_bert":
            eval_feeds = {"input_ids": rng.integers(0, 1000, (64, 32)).astype(np.int64)}
            calibration = [
                {"input_ids": np.random.default_rng(s).integers(0, 1000, (16, 32)).astype(np.int64)}
                for s in range(8)
            ]
        else:
            eval_feeds = {"input": rng.standard_normal((64, 3, 32, 32)).astype(np.float32)}
            calibration = [
                {"input": np.random.default_rng(s).standard_normal((16, 3, 32, 32)).astype(np.float32)}
                for s in range(8)
            ]
        labels = None
        timing_feed = {k: v[:1] for k, v in eval_feeds.items()}
    # the base is the lossless preset's output: factorization runs after folding (BN into Conv, ...)
    base_bytes = io.to_bytes(api.optimize(str(path), preset="lossless").model)
    base_model = io.load(base_bytes)
    base_out = make_session(base_bytes).run(None, eval_feeds)
    base_macs, base_params = macs_of(base_model), parameter_stats(base_model)[0]
    header = f"{name}: MACs {base_macs:,}  params {base_params:,}"
    if labels is not None:
        header += f"  accuracy {(base_out[0].argmax(1) == labels).mean():.4f}"
    print(header)
    print(f"{'config':58s} {'MACs':>6s} {'params':>6s} {'latency':>7s} {'cosine':>8s} {'acc':>7s}  changes")
    for label, make in configs:
        for data_label, data in (("weight", None), ("data", calibration)):
            pass_ = make(data)
            result = api.optimize(base_bytes, passes=[pass_], budget=Budget(min_cosine=0.0), verify=False)
            model = result.model
            candidate = io.to_bytes(model)
            out = make_session(candidate).run(None, eval_feeds)
            cos = min(cosine(a, b) for a, b in zip(out, base_out, strict=True))
            row = result.report.rows[0]
            if name == "tiny_bert":  # shape inference cannot size MatMuls after Reshape: the pass's own count
                macs_text = f"{row.details.get('macs_kept', 1.0):6.3f}"
            else:
                macs_text = f"{macs_of(model) / base_macs:6.3f}"
            params = parameter_stats(model)[0] / base_params
            speed = latency_ratio(base_bytes, candidate, timing_feed, rounds=rounds, threads=threads)
            acc = f"{(out[0].argmax(1) == labels).mean():.4f}" if labels is not None else "-"
            changes = {k: v for k, v in row.changes.items() if k != "params_removed"}
            print(
                f"{label + ' ' + data_label:58s} {macs_text} {params:6.3f} {speed:7.3f} {cos:8.5f} {acc:>7s}  {changes}"
            )


def conv_configs(modes, budgets, energies):
    configs = []
    for mode in modes:
        for budget in budgets:
            configs.append(
                (f"factorize-conv{{mode={mode}, budget={budget}}}",
                 lambda data, m=mode, b=budget: FactorizeConvPass(mode=m, budget=b, calibration_data=data))
            )
        for energy in energies:
            configs.append(
                (f"factorize-conv{{mode={mode}, energy={energy}}}",
                 lambda data, m=mode, e=energy: FactorizeConvPass(mode=m, energy=e, calibration_data=data))
            )
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", nargs="*", default=["digits", "resnet18", "tiny_bert"])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", default="separable,spatial,tucker,auto")
    parser.add_argument("--budgets", default="0.5,0.3")
    parser.add_argument("--energies", default="0.9")
    args = parser.parse_args()
    modes = args.modes.split(",")
    budgets = [float(b) for b in args.budgets.split(",") if b]
    energies = [float(e) for e in args.energies.split(",") if e]
    for name in args.models:
        if name == "tiny_bert":
            configs = [
                (f"factorize-gemm{{budget={b}}}", lambda data, b=b: FactorizeGemmPass(budget=b, calibration_data=data))
                for b in (0.7, 0.5)
            ] + [
                (f"factorize-gemm{{ratio={r}}}", lambda data, r=r: FactorizeGemmPass(ratio=r, calibration_data=data))
                for r in (0.5,)
            ] + [("factorize-gemm{energy=0.9}", lambda data: FactorizeGemmPass(energy=0.9, calibration_data=data))]
        else:
            configs = conv_configs(modes, budgets, energies)
        evaluate(name, configs, rounds=args.rounds, threads=args.threads)
        print()


if __name__ == "__main__":
    main()
