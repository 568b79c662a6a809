"""Exceptions raised by sftonnx, each carrying the process exit code the CLI uses.

Exit codes (documented in the README, relied on by other tools):

* 0 success
* 1 anything else: a bug in sftonnx (traceback shown only with ``--debug``)
* 2 bad usage, or an invalid / unsupported input model, data file or option (:class:`InputError`)
* 3 verification failed: the output differs from the original beyond tolerance (:class:`VerificationError`)
"""

from __future__ import annotations

__all__ = [
    "EXIT_BUG",
    "EXIT_INPUT",
    "EXIT_OK",
    "EXIT_VERIFICATION",
    "InputError",
    "PassConfigError",
    "PassError",
    "SftonnxError",
    "VerificationError",
    "first_line",
]

EXIT_OK = 0
EXIT_BUG = 1
EXIT_INPUT = 2
EXIT_VERIFICATION = 3
#: Longest :func:`first_line` text, so one message stays one readable line.
FIRST_LINE_LIMIT = 400


class SftonnxError(Exception):
    """Base class of every error sftonnx raises on purpose."""

    exit_code: int = EXIT_BUG


class InputError(SftonnxError):
    """Bad usage: the model, data file, option or pass spec cannot be used (exit 2)."""

    exit_code = EXIT_INPUT


class PassConfigError(InputError):
    """A pass was given an invalid option, or the pass spec cannot be parsed (exit 2)."""


class VerificationError(SftonnxError):
    """The optimized model's outputs differ from the original's beyond tolerance (exit 3).

    Attributes:
        pass_name: The pass after which the divergence was first seen (``None`` for the final check).
        first_divergent: Name of the first intermediate tensor that diverges, when located.
        metrics: The metrics that failed, as a JSON-able dict.
    """

    exit_code = EXIT_VERIFICATION

    def __init__(
        self,
        message: str,
        *,
        pass_name: str | None = None,
        first_divergent: str | None = None,
        metrics: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.pass_name = pass_name
        self.first_divergent = first_divergent
        self.metrics = metrics or {}


class PassError(SftonnxError):
    """A pass raised, or left a model that fails the checker or strict shape inference (exit 1).

    The message names the pass and the passes that ran before it, so a user can reproduce it
    with ``--passes`` cut just before the failing one (or use ``--dump-dir``).
    """

    exit_code = EXIT_BUG

    def __init__(self, pass_name: str, *, after: list[str], reason: str) -> None:
        before = ",".join(after) if after else "(none)"
        super().__init__(f"pass '{pass_name}' failed (after: {before}): {reason}")
        self.pass_name = pass_name
        self.after = after
        self.reason = reason


def first_line(error: BaseException | str, *, limit: int = FIRST_LINE_LIMIT) -> str:
    """The first line of an error's message, for one-line reports (the exception's type name when empty).

    Args:
        error: An exception (or a message).
        limit: Longest text returned; a longer line is cut and ends in ``...``.
    """
    text = str(error).strip()
    if not text:
        text = type(error).__name__ if isinstance(error, BaseException) else ""
    text = text.splitlines()[0] if text else text
    return text if len(text) <= limit else text[: limit - 3] + "..."
