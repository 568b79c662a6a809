"""Suite-wide checks.

``modified`` honesty: :meth:`sftonnx.pass_infra.SftPass.call` derives ``modified`` from the change counters
and the pipeline skips clean-up and structure checks when it is false, so a pass that changes the model
without counting it hides the change from both. For the whole session every pass call is wrapped: the model
is serialized before and after, and a call that reports ``modified=False`` while the bytes differ is recorded;
the test that made the call then fails in its teardown (recorded rather than raised, so a test expecting some
other error cannot swallow it); calls made by module- or session-scoped fixtures fail the session. Models whose
initializers hold more than 200 MB are not compared; passes listed in ``KNOWN_DISHONEST`` are recorded without
failing.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import onnx_ir as ir
import pytest

from sftonnx.pass_infra import SftPass

#: Models larger than this (initializer bytes) are not serialized for the honesty check.
HONESTY_MAX_BYTES = 200 * 1024 * 1024

#: Passes whose known dishonesty is fixed elsewhere; their violations are kept in ``HonestyCheck.tolerated``
#: instead of failing the test. Remove an entry once its pass is fixed.
KNOWN_DISHONEST: dict[str, str] = {}


@dataclasses.dataclass
class HonestyCheck:
    """What the ``modified`` honesty check saw during one test.

    Attributes:
        violations: ``"<pass name>: ..."`` for every call that changed the model but reported no change.
        calls: Pass calls compared.
    """

    violations: list[str] = dataclasses.field(default_factory=list)
    tolerated: list[str] = dataclasses.field(default_factory=list)
    calls: int = 0


#: Calls made outside a test function (module- or session-scoped fixtures); reported at the end of the session.
_OUTSIDE_TESTS = HonestyCheck()
_CURRENT = _OUTSIDE_TESTS
#: Session totals, shown in the terminal summary: pass calls wrapped and seconds spent serializing.
_TOTALS = {"calls": 0, "seconds": 0.0}


def _serialized(model: ir.Model) -> bytes | None:
    size = 0
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            if value.const_value is not None:
                size += value.const_value.nbytes
    if size > HONESTY_MAX_BYTES:
        return None
    return ir.to_proto(model).SerializeToString()


def _install() -> None:
    original = SftPass.call
    if getattr(original, "_honesty_checked", False):
        return

    @functools.wraps(original)
    def call(self: SftPass, model: ir.Model):
        start = time.perf_counter()
        before = _serialized(model)
        spent = time.perf_counter() - start
        result = original(self, model)
        start = time.perf_counter()
        if before is not None and not result.modified:
            _CURRENT.calls += 1
            if _serialized(result.model) != before:
                name = getattr(self, "name", type(self).__name__)
                found = _CURRENT.tolerated if name in KNOWN_DISHONEST else _CURRENT.violations
                found.append(
                    f"{name}: reported modified=False but changed the serialized model "
                    f"(changes={dict(result.changes)}, skipped={dict(result.skipped)})"
                )
        _TOTALS["calls"] += 1
        _TOTALS["seconds"] += spent + time.perf_counter() - start
        return result

    call._honesty_checked = True  # type: ignore[attr-defined]
    SftPass.call = call  # type: ignore[method-assign]


_install()


@pytest.fixture(autouse=True)
def modified_honesty() -> HonestyCheck:
    """Fail the test when a pass it ran reported ``modified=False`` but changed the model."""
    global _CURRENT
    _CURRENT = HonestyCheck()
    check = _CURRENT
    yield check
    _CURRENT = _OUTSIDE_TESTS
    if check.violations:
        pytest.fail("dishonest `modified`:\n" + "\n".join(check.violations), pytrace=False)


def pytest_sessionfinish(session, exitstatus) -> None:
    """Fail the session when a pass called by a fixture outside any test reported ``modified`` dishonestly."""
    if _OUTSIDE_TESTS.violations and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    """Say what the honesty check cost, so its overhead stays visible, and what fixtures did dishonestly."""
    if _TOTALS["calls"]:
        terminalreporter.write_line(
            f"modified-honesty check: {_TOTALS['calls']} pass calls, {_TOTALS['seconds']:.2f} s serializing"
        )
    for violation in _OUTSIDE_TESTS.violations:
        terminalreporter.write_line(f"dishonest `modified` in a fixture: {violation}", red=True)
