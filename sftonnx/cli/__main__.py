"""``python -m sftonnx.cli``."""

from sftonnx.cli import main

main()
