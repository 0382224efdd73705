"""Deterministic multi-document YAML with multi-line strings (config.yaml) as readable `|` blocks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    """SafeDumper that prints multi-line strings as literal blocks and never emits &anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_all(objects: Iterable[dict[str, Any]]) -> str:
    """Objects as `---`-separated YAML, keys in builder order."""
    return yaml.dump_all(list(objects), Dumper=_Dumper, sort_keys=False, width=120)
