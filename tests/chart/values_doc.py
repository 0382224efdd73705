"""The chart's values documentation, read from the `# --` comments of values.yaml.

Each documented key has a `# -- text` comment (continued by `# text` lines) right above it. A
documented key is a leaf of the docs even when its value is a map (e.g. `resources`); an
undocumented map (e.g. `image:`) is a section whose keys are documented one by one.

    python tests/chart/values_doc.py            # print the README table
    python tests/chart/values_doc.py --write    # rewrite it in charts/slm-operator/README.md
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "slm-operator"
START = "<!-- values-table:start -->"
END = "<!-- values-table:end -->"

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):(?P<rest>.*)$")


@dataclass(frozen=True)
class ValueDoc:
    """One documented value: its dotted path, default, and description."""

    path: str
    default: Any
    description: str

    @property
    def type_name(self) -> str:
        value = self.default
        if isinstance(value, bool):
            return "bool"
        if isinstance(value, int):
            return "int"
        if isinstance(value, float):
            return "float"
        if isinstance(value, str):
            return "string"
        if isinstance(value, list):
            return "list"
        return "object"


def _lookup(values: dict[str, Any], path: list[str]) -> Any:
    node: Any = values
    for part in path:
        node = node[part]
    return node


def parse(text: str) -> list[ValueDoc]:
    """The documented values of a values.yaml text, in file order."""
    values = yaml.safe_load(text)
    docs: list[ValueDoc] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing sections
    comment: list[str] | None = None
    documented_indent: int | None = None  # inside a documented map: skip its nested keys
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and comment is not None:
            comment.append(stripped.lstrip("#").strip())
            continue
        if not stripped:
            comment = None
            continue
        match = _KEY.match(line)
        if match is None:  # a list item or a continuation of a value
            continue
        indent = len(match["indent"])
        if documented_indent is not None:
            if indent > documented_indent:
                continue
            documented_indent = None
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [key for _, key in stack] + [match["key"]]
        if comment is not None:
            default = _lookup(values, path)
            docs.append(ValueDoc(".".join(path), default, " ".join(comment)))
            if isinstance(default, dict) and default:
                documented_indent = indent
        elif match["rest"].strip() == "":
            stack.append((indent, match["key"]))
        comment = None
    return docs


def undocumented_leaves(text: str) -> list[str]:
    """Paths of values.yaml leaves that no `# --` comment covers."""
    values = yaml.safe_load(text)
    documented = {doc.path for doc in parse(text)}
    missing: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if prefix in documented:
            return
        if isinstance(node, dict) and node:
            for key, child in node.items():
                walk(child, f"{prefix}.{key}" if prefix else key)
        else:
            missing.append(prefix)

    walk(values, "")
    return missing


def table(docs: list[ValueDoc]) -> str:
    rows = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for doc in docs:
        default = json.dumps(doc.default, separators=(",", ":")).replace("|", "\\|")
        description = doc.description.replace("|", "\\|")
        rows.append(f"| `{doc.path}` | {doc.type_name} | `{default}` | {description} |")
    return "\n".join(rows)


def render_readme(readme: str, values_text: str) -> str:
    """The README with its values table replaced by the one generated from values.yaml."""
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table(parse(values_text))}\n{END}{tail}"


def main(argv: list[str]) -> int:
    values_text = (CHART / "values.yaml").read_text()
    if "--write" in argv:
        readme_path = CHART / "README.md"
        readme_path.write_text(render_readme(readme_path.read_text(), values_text))
    else:
        print(table(parse(values_text)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
