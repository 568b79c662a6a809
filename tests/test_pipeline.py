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
