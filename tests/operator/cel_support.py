"""Evaluate a CRD schema's `x-kubernetes-validations` with cel-python, the way the API server does.

The walk applies the schema's defaults first (the API server defaults before it validates), then
evaluates every rule with `self` bound to the value at the rule's node, descending into properties,
array items and map values. It returns the messages of the rules that evaluated to false.
"""

from __future__ import annotations

import copy
from typing import Any

import celpy

_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    value = copy.deepcopy(value)
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        value = {k: apply_defaults(schema["additionalProperties"], v) for k, v in value.items()}
    elif isinstance(value, list) and "items" in schema:
        value = [apply_defaults(schema["items"], v) for v in value]
    return value


def _program(rule: str) -> Any:
    if rule not in _PROGRAMS:
        _PROGRAMS[rule] = _ENV.program(_ENV.compile(rule))
    return _PROGRAMS[rule]


def failures(schema: dict[str, Any], value: Any, path: str = "") -> list[tuple[str, str]]:
    """(path + fieldPath, message) of every rule that does not hold."""
    found: list[tuple[str, str]] = []
    for rule in schema.get("x-kubernetes-validations", ()):
        result = _program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        if isinstance(result, Exception) or not bool(result):
            found.append((path + rule.get("fieldPath", ""), rule["message"]))
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name in value:
                found += failures(sub, value[name], f"{path}.{name}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            found += failures(schema["additionalProperties"], item, f"{path}[{key}]")
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += failures(schema["items"], item, f"{path}[{index}]")
    return found


def validate(schema: dict[str, Any], value: Any) -> list[tuple[str, str]]:
    """Default, then evaluate every CEL rule."""
    return failures(schema, apply_defaults(schema, value))
