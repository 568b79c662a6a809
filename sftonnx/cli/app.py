"""The ``sftonnx`` Typer app: consoles, the error guard every command wears, global options, ``--version``.

Every command module registers on :data:`app`; only the ``sftonnx.cli`` package prints or exits.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from sftonnx.errors import EXIT_BUG, EXIT_OK, SftonnxError, first_line

__all__ = ["app", "err", "guard", "out", "state", "version"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="ONNX graph-rewrite optimizer: fold, fuse, prune, factorize and quantize, verified against the original.",
)
# Wide tables when piped to a file or CI log (rich would otherwise wrap at 80 columns).
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)
state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def guard(function: F) -> F:
    """Turn sftonnx errors into one line on stderr and their exit code; bugs into exit 1."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except SftonnxError as error:
            if state["debug"]:
                traceback.print_exc()
            err.print(f"error: {error}", markup=False)
            raise typer.Exit(error.exit_code) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as error:  # a bug: short message, traceback only with --debug
            if state["debug"]:
                traceback.print_exc()
            text = first_line(error) if str(error).strip() else ""
            err.print(
                f"internal error: {type(error).__name__}: {text} (rerun with --debug for the traceback)", markup=False
            )
            raise typer.Exit(EXIT_BUG) from None

    return wrapper  # type: ignore[return-value]


def _print_version(value: bool) -> None:
    if value:
        out.print(f"sftonnx {version()}", markup=False)
        raise typer.Exit(EXIT_OK)


def version() -> str:
    """The installed distribution's version (``sftonnx.__version__`` when run from a source tree)."""
    try:
        return importlib.metadata.version("sftonnx")
    except importlib.metadata.PackageNotFoundError:
        from sftonnx import __version__

        return __version__


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show info logs.")] = False,
    show_version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    del show_version  # handled eagerly by _print_version
    state["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    # onnxsim and onnxruntime can be chatty on stderr at import; keep our own logs readable.
    logging.getLogger("onnxscript").setLevel(max(level, logging.WARNING))
