"""Tests of the accuracy-aware search (``--preset auto``): front logic, ladders, cache, budgets, CLI exit codes."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from sftonnx import api, io, search
from sftonnx.errors import InputError
from sftonnx.search.ladder import ladder, search_ladder
from sftonnx.search.run import MIN_DISTILL_SECONDS
from sftonnx.verify import make_session

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "onnx" / "digits_cnn.onnx"
DIGITS_TEST = ROOT / "models" / "onnx" / "digits_test.npz"
DIGITS_CALIB = ROOT / "models" / "onnx" / "digits_calib.npz"


def _tiny_mlp(path: pathlib.Path, affine: bool = False) -> pathlib.Path:
    """x[N,8] -> Gemm(8->16) -> Relu -> Gemm(16->4): two layers, seconds to search.

    With ``affine``, a Mul/Add pair after the first Gemm that the lossless preset folds into its weights, so
    even the lossless result differs from the original by float rounding (an output error above 0).
    """
    rng = np.random.default_rng(0)
    inits = [
        onnx.numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w1"),
        onnx.numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
        onnx.numpy_helper.from_array(rng.standard_normal((4, 16)).astype(np.float32), "w2"),
        onnx.numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b2"),
    ]
    nodes = [oh.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1)]
    if affine:
        inits += [
            onnx.numpy_helper.from_array(rng.uniform(0.5, 2.0, 16).astype(np.float32), "s"),
            onnx.numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "t"),
        ]
        nodes += [
            oh.make_node("Mul", ["h", "s"], ["hs"], name="mul"),
            oh.make_node("Add", ["hs", "t"], ["ha"], name="add"),
        ]
    nodes += [
        oh.make_node("Relu", ["ha" if affine else "h"], ["r"], name="relu"),
        oh.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1),
    ]
    graph = oh.make_graph(
        nodes,
        "mlp",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def _accuracy(path: pathlib.Path) -> float:
    data = np.load(DIGITS_TEST)
    session = make_session(str(path))
    logits = session.run(None, {"input": data["input"]})[0]
    return float(np.mean(logits.argmax(axis=1) == data["labels"]) * 100)


# ----------------------------------------------------------------------------------------------- pure
def test_pareto_front_keeps_non_dominated_points():
    points = [
        (1.0, 10.0, 0.5),  # 0: fastest
        (2.0, 5.0, 0.5),  # 1: smaller
        (2.0, 6.0, 0.5),  # 2: dominated by 1
        (3.0, 20.0, 0.0),  # 3: lossless
        (3.0, 20.0, 0.1),  # 4: dominated by 3
        (1.0, 10.0, 0.5),  # 5: duplicate of 0: kept
        (0.5, float("nan"), 0.0),  # 6: NaN never on the front
    ]
    assert search.pareto_front(points) == [0, 1, 3, 5]
    assert search.pareto_front([]) == []
    assert search.pareto_front([(1.0,)]) == [0]



def test_pareto_plot_is_a_png_and_an_unwritable_path_is_an_input_error(tmp_path):
    pytest.importorskip("matplotlib")
    base = search.Candidate("original", "original", "", latency_ms=2.0, size_bytes=4 << 20, error=0.0, feasible=True)
    fast = search.Candidate("preset:int8", "preset", "int8", latency_ms=1.0, size_bytes=1 << 20, error=0.01)
    fast.feasible = True
    result = search.SearchResult(
        chosen=fast, best=fast, candidates=[fast], pareto=["original", "preset:int8"], baseline=base,
        budget=search.SearchBudget(max_error=0.05), objective="latency", sensitivity={}, notes=[], stats={},
        cache_dir=str(tmp_path), calibration_data=None, verify_data=None,
    )
    path = search.write_pareto_plot(result, tmp_path / "front.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="cannot write"):
        search.write_pareto_plot(result, tmp_path / "missing" / "front.png")

def test_budget_needs_a_limit_and_rejects_negative_values():
    with pytest.raises(InputError):
        search.SearchBudget()
    with pytest.raises(InputError):
        search.SearchBudget(max_error=-0.1)
    budget = search.SearchBudget(max_accuracy_drop=1.0)
    assert budget.feasible(search.Candidate("a", "search", "x", drop=1.0, error=0.5))
    assert not budget.feasible(search.Candidate("b", "search", "x", drop=1.01, error=0.0))
    assert not budget.feasible(search.Candidate("c", "search", "x", status="failed"))


def _probe(drop: float, changed: bool = True) -> search.Candidate:
    return search.Candidate("p", "probe", "s", drop=drop, error=drop / 100, changed=changed)


def test_ladder_starts_at_feasible_levels_and_backs_off_most_harmful_first():
    technique = search.Technique("prune-channels", ("Conv",), ("ratio=0.25", "ratio=0.5"), "struct")
    probes = {
        ("prune-channels", "a", 1): _probe(0.1),
        ("prune-channels", "a", 2): _probe(0.9),
        ("prune-channels", "b", 1): _probe(0.3),
        ("prune-channels", "b", 2): _probe(5.0),  # infeasible alone: b starts at level 1
        ("prune-channels", "c", 1): _probe(0.0, changed=False),  # the pass declines c
        ("prune-channels", "c", 2): _probe(0.0, changed=False),
    }
    rungs = ladder(technique, ["a", "b", "c"], probes, search.SearchBudget(max_accuracy_drop=1.0))
    assert rungs == [
        {"a": 2, "b": 1, "c": 0},
        {"a": 1, "b": 1, "c": 0},  # a@0.5 (0.9) is the most harmful
        {"a": 1, "b": 0, "c": 0},  # then b@0.25 (0.3)
    ]
    assert technique.config_spec(rungs[0], "") == (
        "prune-channels{ratio=0.5,layers=a},prune-channels{ratio=0.25,layers=b}"
    )
    quant = search.Technique("quantize", ("Conv",), ("",), "quant")
    assert quant.config_spec({"a": 1, "b": 0}, "allow_random=true") == "quantize{allow_random=true,exclude_nodes=b}"
    assert quant.config_spec({"a": 0, "b": 0}, "") is None
    assert quant.probe_spec("conv.1", 1, "") == r"quantize{exclude_pattern=^(?!conv\.1$)}"


@pytest.mark.parametrize("first_feasible", [0, 1, 2, 5, 6, 9, None])
def test_ladder_search_finds_the_first_feasible_rung(first_feasible):
    rungs = [f"r{i}" for i in range(10)]
    asked = []
    generator = search_ladder(rungs, name="t")
    try:
        spec = next(generator)
        while True:
            asked.append(spec)
            index = int(spec[1:])
            feasible = first_feasible is not None and index >= first_feasible
            spec = generator.send(search.Candidate(spec, "search", spec, feasible=feasible))
    except StopIteration as stop:
        found = stop.value
    assert found == (None if first_feasible is None else f"r{first_feasible}")
    assert len(asked) <= 8  # galloping + bisection, not a linear scan of 10
    assert len(set(asked)) == len(asked)


# ------------------------------------------------------------------------------------- small searches
def _small_search(model: pathlib.Path, cache: pathlib.Path, **kwargs):
    options = {
        "budget": search.SearchBudget(max_error=0.05),
        "techniques": ["quantize-dynamic", "prune-channels"],
        "presets": ["lossless", "int8-dynamic"],
        "objective": "size",
        "cache_dir": cache,
        "latency_runs": 5,
        "latency_seconds": 1.0,
        "allow_random_verification": True,
    }
    options.update(kwargs)
    return search.run_search(model, **options)


def test_cache_resumes_without_recomputing(tmp_path):
    model = _tiny_mlp(tmp_path / "mlp.onnx")
    first = _small_search(model, tmp_path / "cache")
    assert first.stats["evaluated"] > 0 and first.stats["cached"] == 0
    second = _small_search(model, tmp_path / "cache")
    assert second.stats["evaluated"] == 0
    assert second.stats["cached"] == first.stats["evaluated"]
    # An interrupted search: two finished candidates lost; only those are computed again.
    records = sorted(pathlib.Path(first.cache_dir).glob("*.json"))
    for record in records[:2]:
        record.unlink()
    third = _small_search(model, tmp_path / "cache")
    assert third.stats["evaluated"] == 2
    assert third.chosen is not None and third.chosen.spec == first.chosen.spec
    # Other data is another key: nothing reused.
    fourth = _small_search(model, tmp_path / "cache", seed=1)
    assert fourth.stats["cached"] == 0


def test_search_verifies_on_real_data_or_needs_the_override(tmp_path):
    model = _tiny_mlp(tmp_path / "mlp.onnx")
    with pytest.raises(InputError, match="lossy passes are verified on real data"):
        _small_search(model, tmp_path / "cache", allow_random_verification=False)
    calibration = tmp_path / "calib.npz"
    np.savez(calibration, x=np.random.default_rng(5).standard_normal((16, 8)).astype(np.float32))
    found = _small_search(model, tmp_path / "cache", allow_random_verification=False, calibration_data=calibration)
    assert found.verify_data == str(calibration) and not found.random_inputs
    assert any("calibration data" in note and "in-sample" in note for note in found.notes)


def test_search_is_deterministic_with_a_seed(tmp_path):
    model = _tiny_mlp(tmp_path / "mlp.onnx")
    # The second run evaluates in two spawned worker processes: the same candidates, in the same order.
    runs = [_small_search(model, tmp_path / f"cache{i}", seed=3, workers=1 + i) for i in range(2)]
    figures = [[(c.name, c.spec, c.status, c.error, c.size_bytes) for c in r.candidates] for r in runs]
    assert figures[0] == figures[1]
    assert runs[1].stats["evaluated"] == runs[0].stats["evaluated"] > 0 and runs[1].stats["cached"] == 0
    assert runs[0].chosen is not None and runs[0].chosen.spec == runs[1].chosen.spec
    assert runs[0].chosen.error <= 0.05


def test_budget_not_met_raises_and_writes_nothing(tmp_path):
    model = _tiny_mlp(tmp_path / "mlp.onnx", affine=True)
    output = tmp_path / "out.onnx"
    with pytest.raises(search.BudgetNotMetError) as caught:
        api.optimize_auto(
            model, output, max_error=0.0, techniques=["quantize-dynamic"], presets=["int8-dynamic"],
            cache_dir=tmp_path / "cache", latency_runs=5, latency_seconds=1.0, allow_random_verification=True,
        )
    assert caught.value.exit_code == 3
    assert caught.value.result.best is not None
    assert "no candidate meets the budget" in str(caught.value)
    assert not output.exists()


# ------------------------------------------------------------------------------------------------- CLI
def _cli(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sftonnx.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_cli_budget_not_met_exits_3_and_writes_nothing(tmp_path):
    model = _tiny_mlp(tmp_path / "mlp.onnx", affine=True)
    output = tmp_path / "out.onnx"
    refused = _cli("optimize", str(model), str(output), "--preset", "auto", "--max-error", "0", cwd=tmp_path)
    assert refused.returncode == 2 and "lossy passes are verified on real data" in refused.stderr
    done = _cli(
        "optimize", str(model), str(output), "--preset", "auto", "--max-error", "0",
        "--allow-random-verification", cwd=tmp_path,
    )
    assert done.returncode == 3, done.stderr
    assert "no candidate meets the budget" in done.stderr
    assert "closest candidate" in done.stderr
    assert not output.exists()


def test_cli_eval_function_that_raises_exits_2_with_its_error(tmp_path):
    (tmp_path / "bad_metric.py").write_text("def metric(session):\n    raise RuntimeError('metric exploded')\n")
    output = tmp_path / "out.onnx"
    done = _cli(
        "optimize", str(DIGITS), str(output), "--preset", "auto", "--eval", "bad_metric:metric",
        "--max-accuracy-drop", "1", cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "metric exploded" in done.stderr and "RuntimeError" in done.stderr
    assert not output.exists()


@pytest.mark.parametrize(
    ("eval_arg", "message"),
    [("missing.npz", "not found"), (str(DIGITS_CALIB), "no 'labels' array")],
)
def test_cli_eval_file_missing_or_without_labels_exits_2(tmp_path, eval_arg, message):
    done = _cli(
        "optimize", str(DIGITS), str(tmp_path / "out.onnx"), "--preset", "auto", "--eval", eval_arg, cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


# -------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_auto_on_digits_meets_one_point_budget_and_spec_reproduces_it(tmp_path):
    output = tmp_path / "digits.auto.onnx"
    result = api.optimize_auto(
        DIGITS,
        output,
        evaluate=DIGITS_TEST,
        max_accuracy_drop=1.0,
        calibration_data=DIGITS_CALIB,
        techniques=["prune-channels", "quantize"],
        presets=["lossless", "int8"],
        cache_dir=tmp_path / "cache",
        latency_runs=20,
        latency_seconds=2.0,
        distill=False,  # a distilled choice is retrained on rebuild (wall-time stop): not bit-reproducible
    )
    found = result.search
    assert found.chosen is not None and output.is_file()
    drop = _accuracy(DIGITS) - _accuracy(output)
    assert drop <= 1.0
    assert found.chosen.drop is not None and abs(found.chosen.drop - drop) < 1e-6
    # The chosen model is at least as fast (objective) as every feasible preset it was timed with.
    presets = [c for c in found.candidates if c.kind == "preset" and c.feasible and c.latency_ms is not None]
    assert presets and all(found.chosen.latency_ms <= c.latency_ms for c in presets)
    assert result.report_json()["auto"]["spec"] == found.chosen.spec
    # The reproducer spec alone re-creates an equivalent model.
    again = api.optimize(DIGITS, passes=found.chosen.spec, calibration_data=DIGITS_CALIB, verify=False)
    feeds = {"input": np.load(DIGITS_TEST)["input"]}
    expected = make_session(str(output)).run(None, feeds)[0]
    actual = make_session(api.io.to_bytes(again.model)).run(None, feeds)[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_optimize_preset_auto_routes_to_the_search(tmp_path):
    from sftonnx.verify import Budget

    model = _tiny_mlp(tmp_path / "mlp.onnx")
    output = tmp_path / "out.onnx"
    result = api.optimize(
        model, output, preset="auto", budget=Budget(min_cosine=0.98), allow_random_verification=True
    )
    assert isinstance(result, api.AutoOptimizeResult) and output.is_file()
    assert result.report.random_verification and result.search.random_inputs
    assert result.search.budget.max_error == pytest.approx(0.02)
    assert result.search.chosen.error <= 0.02
    assert (tmp_path / ".sftonnx-cache").is_dir()  # next to the output
    assert result.report_json()["auto"]["spec"] == result.search.chosen.spec


# ------------------------------------------------------------------------- task-aware budget (issue 12)
def _near_ties(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """x[N,64] -> Gemm -> y[N,10] whose 10 weight rows differ by 5%: logits of near-equal classes, and data.

    Dynamic int8 keeps cosine above 0.9999 (the shared part dominates) but flips about 5% of the argmax
    decisions (the classes differ by less than its rounding): a candidate cosine alone would accept.
    """
    rng = np.random.default_rng(0)
    shared = rng.standard_normal(64).astype(np.float32)
    weight = (shared[None, :] + 0.05 * rng.standard_normal((10, 64))).astype(np.float32)
    graph = oh.make_graph(
        [oh.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)],
        "near_ties",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 64])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 10])],
        [onnx.numpy_helper.from_array(weight, "w"), onnx.numpy_helper.from_array(np.zeros(10, np.float32), "b")],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])
    model.ir_version = 9
    path, data = folder / "near_ties.onnx", folder / "near_ties_calib.npz"
    onnx.save(model, path)
    np.savez(data, x=rng.standard_normal((200, 64)).astype(np.float32))
    return path, data


def test_auto_refuses_a_candidate_whose_cosine_holds_but_argmax_agreement_does_not(tmp_path):
    model, data = _near_ties(tmp_path)

    def run(min_agreement):
        return api.optimize_auto(
            model, tmp_path / f"out-{min_agreement}.onnx", max_error=0.01, min_agreement=min_agreement,
            calibration_data=data, techniques=["quantize-dynamic"], presets=["lossless", "int8-dynamic"],
            objective="size", cache_dir=tmp_path / "cache", latency_runs=5, latency_seconds=1.0, distill=False,
        ).search

    judged = run(0.99)
    dynamic = next(c for c in judged.candidates if c.name == "preset:int8-dynamic")
    assert dynamic.error < 1e-3 and dynamic.cosine > 0.999  # within max_error=0.01 by cosine ...
    assert dynamic.agreement is not None and 0.9 <= dynamic.agreement < 0.99  # ... not by argmax agreement
    assert not dynamic.feasible and dynamic.within_budget is False
    assert "argmax agreement" in dynamic.budget_failure
    assert judged.budget.score(dynamic) > 1.0  # the continuous score ranks it outside the budget
    assert all("dynamic" not in c.spec for c in judged.candidates if c.feasible)
    assert judged.chosen is not None and judged.chosen.spec == "lossless"
    assert judged.budget.verification_budget(judged.chosen).min_agreement == 0.99  # the final check's budget
    # The same search judged by cosine alone picks the smaller int8 model: what the budget now prevents. Its
    # models are reused from the cache and only measured again under the other budget.
    cosine_only = run(None)
    assert cosine_only.chosen is not None and "dynamic" in cosine_only.chosen.spec  # int8-dynamic or a rung
    assert cosine_only.stats["cached"] == 0 and cosine_only.stats["remeasured"] == 3  # two presets, one probe
    assert (tmp_path / "out-None.onnx").is_file()


@pytest.mark.slow
def test_optimize_preset_auto_takes_the_lossy_budget_agreement(tmp_path):
    from sftonnx.verify import Budget

    model, data = _near_ties(tmp_path)
    result = api.optimize(
        model, tmp_path / "out.onnx", preset="auto", budget=Budget(min_cosine=0.99, min_agreement=0.9),
        calibration_data=data,
    )
    assert result.search.budget.min_agreement == 0.9 and result.search.budget.max_error == pytest.approx(0.01)
    assert result.search.chosen.agreement >= 0.9
    assert result.verification.passed


# ----------------------------------------------------------------------- distillation step (issue 13)
def _search_on_digits(tmp_path: pathlib.Path, budget: search.SearchBudget):
    """A search's state on the digits CNN (held-out test inputs), without running its phases."""
    from sftonnx.search import run as search_run
    from sftonnx.search.evaluation import CandidateEvaluator

    original = search_run._cache_original(DIGITS, tmp_path / "cache")
    inputs = search_run._prepare_inputs(original, None, DIGITS_TEST, DIGITS_CALIB, None, 0, [], False)
    task, hashes = search_run._make_task(original, inputs, 1, 0, budget)
    evaluator = CandidateEvaluator(task, 1, None)
    return search_run, original, search_run._Search(evaluator, hashes, budget, None, [])


@pytest.mark.slow
def test_distill_step_keeps_the_distilled_model_only_when_it_is_better_and_within_the_time_left(tmp_path):
    pytest.importorskip("torch")
    import time

    # Agreement decides (cosine may drift while the decisions recover: the KL loss matches relative logits).
    budget = search.SearchBudget(max_error=2.0, min_agreement=0.5)
    search_run, original, state = _search_on_digits(tmp_path, budget)
    # Half the channels pruned without refit: a lossy choice that training against the original can recover.
    [chosen] = state.run_specs(["prune-channels{ratio=0.5, reconstruct=false}"], ["pruned"], "search", "search")
    chosen.latency_ms = 1.25
    assert chosen.feasible and chosen.agreement < 0.98

    skipped, step = search_run._distill_step(
        state, chosen, original.path, enabled=True, deadline=time.perf_counter() + 2.0, in_sample=False
    )
    assert skipped is None and step.status == "skipped" and "not enough time left" in step.message

    distilled, step = search_run._distill_step(
        state, chosen, original.path, enabled=True, deadline=time.perf_counter() + 40.0, in_sample=False
    )
    assert step.status == "kept", step
    assert distilled is not None and distilled.kind == "distill" and distilled.feasible
    assert MIN_DISTILL_SECONDS <= step.time_budget <= 40  # 40 s left - 3 x build, whole seconds
    assert distilled.spec == f"{chosen.spec},distill{{time_budget={step.time_budget:g}}}"
    assert step.seconds > 0 and step.details["loss_after"] < step.details["loss_before"]
    assert budget.loss(distilled) < budget.loss(chosen)
    assert distilled.agreement > chosen.agreement  # on the 540 held-out test inputs
    assert distilled.latency_ms == chosen.latency_ms  # the same graph: weights only

    # Without torch: one skipped row with the install hint, and nothing trained.
    import sftonnx.passes.distillation.support as support

    original_check = support.torch_available
    support.torch_available = lambda: False
    try:
        none, step = search_run._distill_step(
            state, chosen, original.path, enabled=True, deadline=None, in_sample=False
        )
    finally:
        support.torch_available = original_check
    assert none is None and step.status == "skipped" and step.seconds == 0
    assert step.message == 'distillation skipped: install with pip install "sftonnx[torch]"'


@pytest.mark.slow
def test_cli_auto_without_torch_says_once_that_distillation_was_skipped(tmp_path):
    model, data = _near_ties(tmp_path)
    output, report = tmp_path / "out.onnx", tmp_path / "report.json"
    code = (
        "import sys; sys.modules['torch'] = None  # torch not installed: importing it raises\n"
        "from sftonnx import cli\n"
        "sys.argv = ['sftonnx', *sys.argv[1:]]\n"
        "try:\n    cli.main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "optimize", str(model), str(output), "--preset", "auto", "--objective", "size",
         "--calibration-data", str(data), "--min-agreement", "0.9", "--report", str(report)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    hint = 'step distill: skipped: distillation skipped: install with pip install "sftonnx[torch]"'
    assert done.stdout.count(hint) == 1, done.stdout
    import json

    auto = json.loads(report.read_text())["auto"]
    assert auto["chosen"]["agreement"] >= 0.9 and auto["spec"] != "lossless"  # a lossy choice, not distilled
    assert [step["status"] for step in auto["steps"]] == ["skipped"]


@pytest.mark.slow
def test_cli_auto_without_distillation_keeps_torch_out_of_the_process(tmp_path):
    model = _tiny_mlp(tmp_path / "mlp.onnx")
    code = (
        "import sys; from sftonnx import cli\n"
        "sys.argv = ['sftonnx', *sys.argv[1:]]\n"
        "try:\n    cli.main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "optimize", str(model), str(tmp_path / "out.onnx"), "--preset", "auto",
         "--max-error", "0.05", "--allow-random-verification"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "step distill: skipped" in done.stdout


@pytest.mark.slow
def test_auto_writes_the_distilled_model_when_distillation_lowers_the_accuracy_drop(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from sftonnx.search import techniques

    # One technique with one level: half the channels of each conv pruned without refit (a lossy choice that
    # distillation recovers; the registered levels refit on the calibration data and leave nothing to recover).
    lossy = techniques.Technique("prune-channels", ("Conv",), ("ratio=0.5, reconstruct=false",), "struct")
    monkeypatch.setattr(techniques, "TECHNIQUES", (lossy,))
    output = tmp_path / "digits.auto.onnx"
    result = api.optimize_auto(
        DIGITS, output, evaluate=DIGITS_TEST, max_accuracy_drop=10.0, calibration_data=DIGITS_CALIB,
        presets=["lossless"], cache_dir=tmp_path / "cache", latency_runs=10, latency_seconds=1.0, time_budget=40.0,
    )
    found = result.search
    pruned = next(c for c in found.candidates if c.kind == "search")
    [step] = found.steps
    assert step.status == "kept" and step.candidate == "distill", step
    assert found.chosen.kind == "distill" and found.chosen.spec.startswith(pruned.spec + ",distill{time_budget=")
    assert result.report_json()["auto"]["spec"] == found.chosen.spec
    # the write copies the weights the search measured instead of training again: the written model is that one
    last = result.report.rows[-1]
    assert last.name == "distill" and last.changes["initializers_loaded"] > 0
    measured, written = io.load(found.chosen.model_path), io.load(output)
    for name, value in measured.graph.initializers.items():
        np.testing.assert_array_equal(written.graph.initializers[name].const_value.numpy(),
                                      value.const_value.numpy(), err_msg=name)
    written_drop = _accuracy(DIGITS) - _accuracy(output)
    assert found.chosen.drop == pytest.approx(written_drop)
    assert written_drop < pruned.drop  # distillation recovered top-1 on the held-out test set
    assert found.chosen.latency_ms == pruned.latency_ms


def test_fp16_preset_candidate_is_the_preset_not_the_bare_pass(tmp_path):
    """'fp16' names a preset and a pass: the search's preset candidate runs the preset (lossless first)."""
    model = _tiny_mlp(tmp_path / "mlp.onnx")
    result = _small_search(model, tmp_path / "cache", presets=["fp16"], techniques=[])
    candidate = next(c for c in result.candidates if c.name == "preset:fp16")
    assert candidate.spec.startswith("lossless,") and "fp16" in candidate.spec
