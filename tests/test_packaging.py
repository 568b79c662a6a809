"""The wheel ships every package: a subpackage missing from pyproject's list works in an editable install only."""

from __future__ import annotations

import pathlib

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _packages_on_disk() -> set[str]:
    found = set()
    for top, name in ((ROOT / "sftonnx", "sftonnx"), (ROOT / "passes", "sftonnx.passes")):
        for init in top.rglob("__init__.py"):
            parts = init.parent.relative_to(top).parts
            found.add(".".join((name, *parts)))
    return found


def test_every_package_on_disk_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    missing = _packages_on_disk() - listed
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    assert "sftonnx.passes.layout" in listed and "sftonnx.passes.distillation" in listed
