"""The ``sftonnx`` command: the only package that prints or exits.

Exit codes: 0 success; 1 a bug (traceback with ``--debug``); 2 bad usage or input; 3 verification failed.

Modules: :mod:`~sftonnx.cli.app` (the app, error guard, global options, ``--version``), one module per command
group - :mod:`~sftonnx.cli.optimize`, :mod:`~sftonnx.cli.info` (``inspect``, ``passes``),
:mod:`~sftonnx.cli.bench` (``bench``, ``compare``) - and :mod:`~sftonnx.cli.format` (number formatting).
Importing this package registers the commands, in the order ``--help`` lists them.
"""

from __future__ import annotations

from sftonnx.cli.app import app

# Registration order is the order --help lists the commands in.
# isort: off
from sftonnx.cli import optimize as _optimize  # noqa: F401  (registers optimize)
from sftonnx.cli import info as _info  # noqa: F401  (registers inspect, passes)
from sftonnx.cli import bench as _bench  # noqa: F401  (registers bench, compare)

# isort: on

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``sftonnx`` console script."""
    app()
