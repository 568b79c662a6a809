"""The pipeline's guards: structure checks name the breaking pass, verify-each names the diverging pass and
tensor, dumps are reproducers, preconditions skip in presets and fail when asked for, nothing is written on
failure."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sftonnx import api
from sftonnx.errors import InputError, PassError, VerificationError
from sftonnx.pass_infra import Numerics, PassReport, SftPass
from sftonnx.pipeline import Pipeline, Verifier
from sftonnx.verify import Budget, input_specs, random_feeds, resolve_shapes
from tests.helpers import make_model, seeded

TWO_LAYERS = """
<ir_version: 8, opset_import: ["" : 18]>
two (float[N, 4] x) => (float[N, 3] y) {
    h = MatMul(x, w1)
    r = Relu(h)
    y = MatMul(r, w2)
}
"""


def two_layers() -> ir.Model:
    return make_model(TWO_LAYERS, w1=seeded((4, 5)), w2=seeded((5, 3), seed=1))


class ScaleSecondWeight(SftPass):
    """Claims to be lossless but scales w2 by 1.05."""

    name = "bad-scale"

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        value = model.graph.initializers["w2"]
        value.const_value = ir.tensor(value.const_value.numpy() * 1.05, name="w2")
        report.changes["weights_scaled"] += 1


class LossyScale(ScaleSecondWeight):
    name = "lossy-scale"
    numerics = Numerics.APPROXIMATE


class BreakStructure(SftPass):
    """Rewires the last MatMul to a value with the wrong rank (shape inference must object)."""

    name = "bad-structure"

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        last = list(model.graph)[-1]
        bogus = ir.Value(
            name="bogus",
            shape=ir.Shape([7]),
            type=ir.TensorType(ir.DataType.FLOAT),
            const_value=ir.tensor(np.ones(7, np.float32), name="bogus"),
        )
        model.graph.register_initializer(bogus)
        last.replace_input_with(1, bogus)
        report.changes["inputs_rewired"] += 1


class Crash(SftPass):
    name = "crash"

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        raise ZeroDivisionError("oops")


class NeedsConv(SftPass):
    name = "needs-conv"

    def requires(self, model: ir.Model) -> None:
        if not any(node.op_type == "Conv" for node in model.graph):
            raise ir.passes.PreconditionError("the model has no Conv")

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        pass


class Noop(SftPass):
    name = "noop"

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        pass


def verifier_for(model: ir.Model) -> Verifier:
    specs = input_specs(model)
    shapes, _ = resolve_shapes(specs, {"x": (3, 4)})
    return Verifier(
        ir.to_proto(model).SerializeToString(), [random_feeds(specs, shapes)], budget=Budget(min_cosine=0.99)
    )


def test_verify_each_names_pass_and_first_divergent_tensor(tmp_path):
    model = two_layers()
    pipeline = Pipeline(
        [Noop(), ScaleSecondWeight()], verifier=verifier_for(model), verify_each=True, dump_dir=tmp_path
    )
    with pytest.raises(VerificationError, match="bad-scale") as caught:
        pipeline.run(model)
    assert caught.value.pass_name == "bad-scale"
    assert caught.value.first_divergent == "y"
    dumped = tmp_path / "before_01_bad-scale.onnx"
    assert dumped.exists() and "bad-scale" in (tmp_path / "reproduce.txt").read_text()
    np.testing.assert_array_equal(
        ir.load(dumped).graph.initializers["w2"].const_value.numpy(), seeded((5, 3), seed=1)
    )


def test_lossy_pass_is_held_to_budget_and_later_exact_pass_to_its_input():
    model = two_layers()
    report = Pipeline([LossyScale(), Noop()], verifier=verifier_for(model), verify_each=True).run(model)
    assert report.rows[0].error["cosine"] > 0.999 and report.rows[0].error["max_abs"] > 0
    # An exact pass after a lossy one is compared with the model it was given, so its drift must be zero.
    model = two_layers()
    with pytest.raises(VerificationError, match="bad-scale"):
        Pipeline([LossyScale(), ScaleSecondWeight()], verifier=verifier_for(model), verify_each=True).run(
            model
        )


def test_structure_breakage_names_the_pass():
    with pytest.raises(PassError, match=r"pass 'bad-structure' failed \(after: noop\).*shape inference"):
        Pipeline([Noop(), BreakStructure()]).run(two_layers())


def test_crash_names_the_pass(tmp_path):
    with pytest.raises(PassError, match=r"pass 'crash' failed \(after: \(none\)\): oops"):
        Pipeline([Crash()], dump_dir=tmp_path).run(two_layers())
    assert (tmp_path / "before_00_crash.onnx").exists()


def test_precondition_skips_in_preset_but_fails_when_requested():
    report = Pipeline([(NeedsConv(), True)]).run(two_layers())
    assert report.rows[0].status == "skipped" and "no Conv" in report.rows[0].message
    with pytest.raises(InputError, match="needs-conv cannot be applied to this model: the model has no Conv"):
        Pipeline([(NeedsConv(), False)]).run(two_layers())


def test_optimize_writes_nothing_when_verification_fails(tmp_path):
    source = tmp_path / "in.onnx"
    ir.save(two_layers(), source)
    out = tmp_path / "out.onnx"
    with pytest.raises(VerificationError, match="nothing written"):
        api.optimize(source, out, passes=[ScaleSecondWeight()])
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_optimize_refuses_to_overwrite_input(tmp_path):
    source = tmp_path / "in.onnx"
    ir.save(two_layers(), source)
    with pytest.raises(InputError, match="--overwrite"):
        api.optimize(source, source)
    result = api.optimize(source, source, overwrite=True)
    assert result.verification.passed and source.exists()


def test_optimize_report_statistics(tmp_path):
    text = TWO_LAYERS.replace("r = Relu(h)", "i = Identity(h)\n    r = Relu(i)")
    model = make_model(text, w1=seeded((4, 5)), w2=seeded((5, 3), seed=1))
    result = api.optimize(model, passes="eliminate-identity", input_shapes=["x=2x4"], verify_each=True)
    row = result.report.rows[0]
    assert row.changes == {"nodes_removed": 1}
    assert (row.before.nodes, row.after.nodes) == (4, 3)
    assert row.before.macs == row.after.macs == 2 * 4 * 5 + 2 * 5 * 3
    assert row.error["max_abs"] == 0.0
    assert result.report.to_json()["rows"][0]["name"] == "eliminate-identity"


def test_preset_passes_that_do_not_apply_are_skipped_not_fatal():
    """A preset's pass whose precondition fails (no Conv for factorize-conv) is a skipped row, not exit 2."""
    model = two_layers()
    result = api.optimize(
        model, preset="compact", budget=Budget(min_cosine=0.0, min_agreement=None), allow_random_verification=True
    )
    rows = {row.name: row for row in result.report.rows}
    assert rows["factorize-conv"].status == "skipped" and "no Conv" in rows["factorize-conv"].message
    with pytest.raises(InputError, match="factorize-conv cannot be applied"):
        api.optimize(two_layers(), passes="factorize-conv{mode=tucker}", allow_random_verification=True)


# ------------------------------------------------------------------------------------- real data
class RecordCalibration(SftPass):
    """A lossy pass that only records the calibration samples it is given (by their value)."""

    name = "record-calibration"
    numerics = Numerics.APPROXIMATE
    uses_calibration = True
    seen: list[float] = []

    def __init__(self, *, calibration_data=None) -> None:
        self.calibration_data = calibration_data

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        from sftonnx.verify import calibration_feeds

        for feed in calibration_feeds(self.calibration_data, input_specs(model)):
            RecordCalibration.seen.extend(float(v) for v in feed["x"][..., 0].ravel())


@pytest.fixture
def recording(monkeypatch):
    from sftonnx.passes import REGISTRY

    monkeypatch.setitem(REGISTRY, RecordCalibration.name, RecordCalibration)
    RecordCalibration.seen = []
    return RecordCalibration


def _numbered_rows(count: int) -> np.ndarray:
    return np.repeat(np.arange(count, dtype=np.float32)[:, None], 4, axis=1)  # row i is all i


def test_calibration_without_data_holds_out_the_last_quarter_for_verification(tmp_path, recording):
    path = tmp_path / "calib.npz"
    np.savez(path, x=_numbered_rows(16))
    result = api.optimize(two_layers(), passes="record-calibration", calibration_data=path)
    assert sorted(set(recording.seen)) == list(range(12))  # the passes never see samples 12..15
    notes = " ".join(result.report.input_notes)
    assert "held-out calibration data, samples 12..15" in notes and "see only samples 0..11" in notes
    assert result.verification.passed and not result.report.random_verification
    # The same with a folder: one file per sample, the last 2 of 8 files held out.
    folder = tmp_path / "calib"
    folder.mkdir()
    for index in range(8):
        np.savez(folder / f"s{index}.npz", x=np.full((1, 4), index, np.float32))
    recording.seen = []
    result = api.optimize(two_layers(), passes="record-calibration", calibration_data=folder)
    assert sorted(set(recording.seen)) == list(range(6))
    assert "2 file(s) of" in " ".join(result.report.input_notes) and "(s6.npz, s7.npz)" in " ".join(
        result.report.input_notes
    )
    # Too few samples to hold out: verification runs on them all, and says it is in-sample.
    small = tmp_path / "small.npz"
    np.savez(small, x=_numbered_rows(5))
    recording.seen = []
    result = api.optimize(two_layers(), passes="record-calibration", calibration_data=small)
    assert sorted(set(recording.seen)) == list(range(5))
    assert "in-sample" in " ".join(result.report.input_notes)


def test_explicit_data_leaves_all_calibration_samples_to_the_passes(tmp_path, recording):
    path = tmp_path / "calib.npz"
    np.savez(path, x=_numbered_rows(16))
    np.savez(tmp_path / "data.npz", x=_numbered_rows(3) + 100)
    api.optimize(two_layers(), passes="record-calibration", calibration_data=path, data=tmp_path / "data.npz")
    assert sorted(set(recording.seen)) == list(range(16))


def test_lossy_passes_without_real_data_are_refused_unless_allowed(recording):
    with pytest.raises(InputError, match="lossy passes are verified on real data: give --data or --calibration-data"):
        api.optimize(two_layers(), passes="prune{rate=0.3}")
    result = api.optimize(two_layers(), passes="simplify")  # lossless: random inputs are fine
    assert not result.report.random_verification
    result = api.optimize(
        two_layers(), passes="prune{rate=0.3}", budget=Budget(min_cosine=0.0, min_agreement=0.0),
        allow_random_verification=True,
    )
    assert result.report.random_verification and result.report.to_json()["random_verification"] is True
    assert any("random inputs (--allow-random-verification)" in n for n in result.report.input_notes)
    # Without verification nothing is judged on random inputs, so nothing is refused.
    api.optimize(two_layers(), passes="prune{rate=0.3}", verify=False)


RECURRENT = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[1, T, 4] x, float[2, 1, 3] state) => (float[1, T, 5] y, float[2, 1, 3] next) {
    y = MatMul(x, w)
    next = Tanh(state)
}
"""


def test_folder_of_different_shapes_with_a_state_input_for_data_and_calibration(tmp_path):
    model = make_model(RECURRENT, w=seeded((4, 5)))
    folder = tmp_path / "lines"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index, width in enumerate((7, 12, 5, 9, 16, 3, 10, 8)):
        np.savez(folder / f"line{index}.npz", x=rng.standard_normal((1, width, 4)).astype(np.float32),
                 state=rng.standard_normal((2, 1, 3)).astype(np.float32))
    result = api.optimize(model, passes="quantize", data=folder, calibration_data=folder)
    assert result.report.rows[0].changes  # quantized, calibrated on the folder
    assert result.verification.passed
    assert any("8 feed(s) of user data" in n and "one per file" in n for n in result.report.input_notes)
    by_name = {m.name: m for m in result.verification.outputs}
    assert by_name["y"].kind == "scores" and by_name["y"].decisions == sum((7, 12, 5, 9, 16, 3, 10, 8))
    assert by_name["y"].argmax_agreement >= 0.99
    # Calibration alone: the last 2 files verify, the first 6 calibrate.
    # (int8 of a 4x5 MatMul on unseen lines: cosine about 0.98, so the cosine limit is lowered here.)
    result = api.optimize(
        make_model(RECURRENT, w=seeded((4, 5))), passes="quantize", calibration_data=folder,
        budget=Budget(min_cosine=0.95),
    )
    assert any("(line6.npz, line7.npz)" in n for n in result.report.input_notes)
    assert result.verification.outputs[0].decisions == 10 + 8  # the two held-out lines, position by position


# ----------------------------------------------------------- passes that may be undone, and the verification hook
class LossyFlip(SftPass):
    """Negates w2: every output changes sign, far outside any budget."""

    name = "lossy-flip"
    numerics = Numerics.APPROXIMATE

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        value = model.graph.initializers["w2"]
        value.const_value = ir.tensor(-value.const_value.numpy(), name="w2")
        report.changes["weights_flipped"] += 1


class RevertibleFlip(LossyFlip):
    name = "revertible-flip"
    revert_on_failure = True


class CountCalls(Noop):
    name = "count-calls"
    calls = 0

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        CountCalls.calls += 1


WITH_IDENTITY = """
<ir_version: 8, opset_import: ["" : 18]>
two (float[N, 4] x) => (float[N, 3] y) {
    h = MatMul(x, w1)
    r = Relu(h)
    i = Identity(r)
    y = MatMul(i, w2)
}
"""

DATA = {"x": seeded((16, 4), seed=5)}


def test_a_refused_pass_that_opts_in_is_undone_and_others_still_fail(tmp_path):
    out = tmp_path / "out.onnx"
    result = api.optimize(two_layers(), out, passes=[Noop(), RevertibleFlip()], data=DATA)
    row = result.report.rows[1]
    assert row.status == "reverted" and row.changes == {"weights_flipped": 1}
    assert row.message.startswith("the final verification refused its result: output 'y'")
    assert result.report.reverted == [{"pass": "revertible-flip", "index": 1, "reason": row.message.split(";")[0]}]
    assert result.report.verification["passed"] and result.report.final == row.before
    np.testing.assert_array_equal(ir.load(out).graph.initializers["w2"].const_value.numpy(), seeded((5, 3), seed=1))
    # the later pass changed nothing: it is not run again
    CountCalls.calls = 0
    result = api.optimize(two_layers(), None, passes=[RevertibleFlip(), CountCalls()], data=DATA)
    assert CountCalls.calls == 1 and result.report.rows[0].status == "reverted"
    # a lossy pass without that alternative keeps the refusal
    with pytest.raises(VerificationError, match="nothing written"):
        api.optimize(two_layers(), out, passes=[LossyFlip()], data=DATA, overwrite=True)


def test_passes_after_an_undone_pass_run_again_when_they_had_changed_something():
    model = make_model(WITH_IDENTITY, w1=seeded((4, 5)), w2=seeded((5, 3), seed=1))
    from sftonnx.passes import REGISTRY

    result = api.optimize(model, None, passes=[RevertibleFlip(), REGISTRY["eliminate-identity"]()], data=DATA)
    assert result.report.rows[0].status == "reverted"
    assert [r.name for r in result.report.rows] == ["revertible-flip", "eliminate-identity"]
    assert result.report.rows[1].status == "ok" and sum(result.report.rows[1].changes.values()) == 1
    assert [n.op_type for n in result.model.graph] == ["MatMul", "Relu", "MatMul"]  # the Identity went again
    np.testing.assert_array_equal(result.model.graph.initializers["w2"].const_value.numpy(), seeded((5, 3), seed=1))
    assert result.report.final.nodes == 3 and result.report.verification["passed"]


def test_verify_each_undoes_an_opted_in_pass_right_away():
    result = api.optimize(two_layers(), None, passes=[RevertibleFlip(), Noop()], data=DATA, verify_each=True)
    row = result.report.rows[0]
    assert row.status == "reverted" and row.message.startswith("the per-pass verification refused its result")
    assert row.after == row.before and result.report.rows[1].status == "ok"
    with pytest.raises(VerificationError, match="pass 'lossy-flip' changed the outputs"):
        api.optimize(two_layers(), None, passes=[LossyFlip()], data=DATA, verify_each=True)


class SeeVerification(LossyScale):
    name = "see-verification"
    uses_verification = True
    seen: list = []

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        SeeVerification.seen.append(getattr(self, "verification", None))
        super().rewrite(model, report)


def test_passes_that_ask_get_the_final_checks_feeds_expected_outputs_and_budget():
    from sftonnx.pass_infra import VerificationData

    SeeVerification.seen = []
    step = SeeVerification()
    budget = Budget(min_cosine=0.9)
    result = api.optimize(two_layers(), None, passes=[step], data=DATA, budget=budget)
    (given,) = SeeVerification.seen
    assert isinstance(given, VerificationData) and given.budget == budget and list(given.names) == ["y"]
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in given.feeds]), DATA["x"])
    x = DATA["x"]
    expected = np.maximum(x @ seeded((4, 5)), 0) @ seeded((5, 3), seed=1)
    np.testing.assert_allclose(np.concatenate([o[0] for o in given.expected]), expected, rtol=1e-5, atol=1e-5)
    assert step.verification is None  # for the call only
    assert result.verification.passed
    SeeVerification.seen = []
    api.optimize(two_layers(), None, passes=[SeeVerification()], verify=False)
    assert SeeVerification.seen == [None]  # nothing verified: nothing handed over


class Reporting(LossyScale):
    name = "reporting"
    reports_progress = True

    def rewrite(self, model: ir.Model, report: PassReport) -> None:
        self.progress(1.0, 4.0, "epoch 1 loss 0.5")  # type: ignore[attr-defined]
        self.progress(4.0, 4.0, "epoch 2 loss 0.25")  # type: ignore[attr-defined]
        super().rewrite(model, report)


def test_passes_that_report_progress_reach_the_callers_pass_progress_for_the_call_only():
    calls: list[tuple] = []
    step, quiet_step = Reporting(), LossyScale()
    quiet_step.progress = "untouched"  # a pass that does not report progress keeps its attribute
    api.optimize(two_layers(), None, passes=[quiet_step, step], data=DATA,
                 pass_progress=lambda *args: calls.append(args))
    assert calls == [("reporting", 1.0, 4.0, "epoch 1 loss 0.5"), ("reporting", 4.0, 4.0, "epoch 2 loss 0.25")]
    assert step.progress is None and quiet_step.progress == "untouched"
