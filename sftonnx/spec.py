"""Pass specs: parsing, preset expansion and pass construction.

Spec syntax (``--passes``): comma-separated pass names, each with optional options in braces whose keys
are the pass constructor's keywords and whose values are parsed by its type hints::

    simplify,fold-bn,prune{rate=0.3},quantize{method=entropy, per_channel=true}

A preset name may stand in a spec and expands to its passes (``lossless,prune{rate=0.3}``).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from sftonnx.errors import PassConfigError
from sftonnx.pass_infra import SftPass, coerce_option, pass_options

__all__ = ["build_passes", "parse_spec", "resolve_spec"]


def parse_spec(spec: str) -> list[tuple[str, dict[str, str]]]:
    """Split a spec into ``[(name, {option: raw value})]``.

    Raises:
        PassConfigError: Unbalanced braces, an empty name, or an option without ``=``.
    """
    items: list[tuple[str, dict[str, str]]] = []
    position = 0
    text = spec.strip()
    if not text:
        raise PassConfigError("empty pass spec")
    while position < len(text):
        end = position
        while end < len(text) and text[end] not in ",{}":
            end += 1
        name = text[position:end].strip()
        if not name:
            raise PassConfigError(f"pass spec '{spec}': empty pass name at character {position + 1}")
        options: dict[str, str] = {}
        position = end
        if position < len(text) and text[position] == "{":
            close = text.find("}", position)
            if close < 0:
                raise PassConfigError(f"pass spec '{spec}': '{{' after '{name}' is never closed")
            body = text[position + 1 : close]
            if "{" in body:
                raise PassConfigError(f"pass spec '{spec}': nested '{{' in the options of '{name}'")
            for part in [p for p in body.split(",") if p.strip()]:
                key, sep, value = part.partition("=")
                if not sep or not key.strip():
                    raise PassConfigError(
                        f"pass spec '{spec}': option '{part.strip()}' of '{name}' needs key=value"
                    )
                options[key.strip()] = value.strip()
            position = close + 1
        elif position < len(text) and text[position] == "}":
            raise PassConfigError(f"pass spec '{spec}': unexpected '}}' after '{name}'")
        items.append((name, options))
        while position < len(text) and text[position] in " \t":
            position += 1
        if position < len(text):
            if text[position] != ",":
                raise PassConfigError(f"pass spec '{spec}': expected ',' after '{name}'")
            position += 1
    return items


def resolve_spec(
    spec: str, registry: Mapping[str, type[SftPass]], presets: Mapping[str, str], *, _depth: int = 0
) -> list[tuple[str, dict[str, str], bool]]:
    """Parse ``spec`` and expand preset names: ``[(pass name, raw options, came_from_preset)]``.

    Raises:
        PassConfigError: An unknown pass or preset name (with the closest known names).
    """
    if _depth > 4:
        raise PassConfigError("presets nest too deeply")
    resolved: list[tuple[str, dict[str, str], bool]] = []
    for name, options in parse_spec(spec):
        if name in registry:
            resolved.append((name, options, _depth > 0))
        elif name in presets:
            if options:
                raise PassConfigError(f"preset '{name}' takes no options; list its passes to configure them")
            resolved.extend(
                (n, o, True) for n, o, _ in resolve_spec(presets[name], registry, presets, _depth=_depth + 1)
            )
        else:
            close = difflib.get_close_matches(name, [*registry, *presets], n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else " (see 'sftonnx passes')"
            raise PassConfigError(f"unknown pass '{name}'{hint}")
    return resolved


def build_passes(
    spec: str,
    registry: Mapping[str, type[SftPass]],
    presets: Mapping[str, str],
    *,
    extra: Mapping[str, Any] | None = None,
) -> list[tuple[SftPass, bool]]:
    """Instantiate the passes of ``spec``: ``[(pass, came_from_preset)]``.

    Args:
        spec: The pass spec.
        registry: ``{name: pass class}``.
        presets: ``{preset name: spec}``.
        extra: Keyword values handed to every pass whose constructor accepts them and that the spec does
            not set (e.g. ``calibration_data``).

    Raises:
        PassConfigError: Unknown pass or option, or a value that does not parse or validate.
    """
    passes: list[tuple[SftPass, bool]] = []
    for name, raw_options, from_preset in resolve_spec(spec, registry, presets):
        cls = registry[name]
        declared = pass_options(cls)
        kwargs: dict[str, Any] = {}
        for key, raw in raw_options.items():
            if key not in declared:
                known = ", ".join(declared) or "none"
                raise PassConfigError(f"{name}: unknown option '{key}' (options: {known})")
            kwargs[key] = coerce_option(name, declared[key], raw)
        for key, value in (extra or {}).items():
            if key in declared and key not in kwargs and value is not None:
                kwargs[key] = value
        try:
            passes.append((cls(**kwargs), from_preset))
        except PassConfigError:
            raise
        except (TypeError, ValueError) as error:
            raise PassConfigError(f"{name}: {error}") from None
    return passes
