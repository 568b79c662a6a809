"""Spec parsing, option coercion and pass construction."""

from __future__ import annotations

from typing import Literal

import pytest

from sftonnx.errors import PassConfigError
from sftonnx.pass_infra import PassReport, SftPass
from sftonnx.pipeline import build_passes, parse_spec, resolve_spec


class _Toy(SftPass):
    """Toy pass.

    Args:
        rate: A rate.
        method: How.
    """

    name = "toy"

    def __init__(
        self,
        *,
        rate: float = 0.5,
        method: Literal["minmax", "entropy"] = "minmax",
        per_channel: bool = True,
        layers: tuple[str, ...] = (),
        limit: int | None = None,
    ) -> None:
        if not 0 < rate < 1:
            raise PassConfigError(f"toy: rate must be in (0, 1), got {rate}")
        self.rate, self.method, self.per_channel, self.layers, self.limit = (
            rate,
            method,
            per_channel,
            layers,
            limit,
        )

    def rewrite(self, model, report: PassReport) -> None:
        pass


REGISTRY = {"toy": _Toy}
PRESETS = {"both": "toy,toy{rate=0.25}"}


def test_parse_spec_with_options():
    assert parse_spec("a, b{x=1, y=two} ,c{}") == [("a", {}), ("b", {"x": "1", "y": "two"}), ("c", {})]


@pytest.mark.parametrize("bad", ["", "a{x=1", "a}x", "a{x}", "a,,b", "a{x=1}b", "a{{x=1}}"])
def test_parse_spec_errors(bad):
    with pytest.raises(PassConfigError):
        parse_spec(bad)


def test_options_are_typed():
    ((toy, from_preset),) = build_passes(
        "toy{rate=0.3, method=ENTROPY, per_channel=false, layers=a|b, limit=none}", REGISTRY, PRESETS
    )
    assert not from_preset
    assert (toy.rate, toy.method, toy.per_channel, toy.layers, toy.limit) == (
        0.3,
        "entropy",
        False,
        ("a", "b"),
        None,
    )
    assert toy.spec() == "toy{rate=0.3, method=entropy, per_channel=false, layers=a|b}"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("toy{rate=abc}", "expects float"),
        ("toy{rate=1.5}", r"rate must be in \(0, 1\)"),
        ("toy{method=kl}", "minmax|entropy"),
        ("toy{colour=red}", "unknown option 'colour'"),
        ("tyo", "did you mean toy"),
        ("both{rate=1}", "takes no options"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(PassConfigError, match=message):
        build_passes(spec, REGISTRY, PRESETS)


def test_presets_expand_and_are_marked():
    assert resolve_spec("both,toy", REGISTRY, PRESETS) == [
        ("toy", {}, True),
        ("toy", {"rate": "0.25"}, True),
        ("toy", {}, False),
    ]


def test_report_counts_decide_modified():
    import onnx_ir as ir

    class Counting(_Toy):
        def rewrite(self, model, report):
            report.changes["things_done"] += 2
            report.skipped["thing_shared"] += 1

    model = ir.from_onnx_text(
        '<ir_version: 8, opset_import: ["" : 18]> g (float[2] x) => (float[2] y) { y = Relu(x) }'
    )
    report = Counting()(model)
    assert report.modified and report.changes == {"things_done": 2} and report.skipped == {"thing_shared": 1}
    assert not _Toy()(model).modified


def test_honesty_check_catches_an_uncounted_change(modified_honesty):
    """The suite-wide check (tests/conftest.py) records a pass that changes the model but counts nothing."""
    import onnx_ir as ir

    class Dishonest(_Toy):
        def rewrite(self, model, report):
            next(iter(model.graph)).name = "renamed_without_counting"

    class Honest(_Toy):
        def rewrite(self, model, report):
            next(iter(model.graph)).name = "renamed_and_counted"
            report.changes["nodes_renamed"] += 1

    text = '<ir_version: 8, opset_import: ["" : 18]> g (float[2] x) => (float[2] y) { y = Relu(x) }'
    assert not Dishonest()(ir.from_onnx_text(text)).modified
    assert len(modified_honesty.violations) == 1 and modified_honesty.violations[0].startswith("toy: ")
    modified_honesty.violations.clear()  # this test's own teardown would fail otherwise
    assert Honest()(ir.from_onnx_text(text)).modified
    assert not _Toy()(ir.from_onnx_text(text)).modified
    assert modified_honesty.violations == [] and modified_honesty.calls == 2


def test_first_line_of_an_error():
    from sftonnx.errors import first_line

    assert first_line(RuntimeError("  bad node\n  at frame 1\n")) == "bad node"
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(RuntimeError("x" * 500), limit=10) == "xxxxxxx..."
