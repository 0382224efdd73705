"""The README's two commands are the whole setup, and CI runs exactly them.

A newcomer types the commands in the README's first code block on a fresh machine; CI must exercise
the same path (issue: `make test` once failed there because `.ci/run` installed more than the README
said). These tests read the files that define that path, so a setup step added to `.ci/run` or
dropped from the Makefile fails here first.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md must open with a bash block of the newcomer commands"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def _make_prerequisites(target: str) -> set[str]:
    match = re.search(rf"^{target}:([^#\n]*)", (ROOT / "Makefile").read_text(), re.M)
    assert match, f"no `{target}` target in the Makefile"
    return set(match.group(1).split())


def test_readme_opens_with_run_and_test_commands() -> None:
    assert _readme_commands() == ["make dev", "make test"]


def test_ci_runs_the_readme_commands_and_nothing_else() -> None:
    shell_glue = re.compile(r"^(set -[a-z]+ \w+|set -\w+|cd .*|trap .*|make down)$")
    lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()[1:]
        if line.strip() and not line.strip().startswith("#")
    ]
    commands = [line for line in lines if not shell_glue.match(line)]
    assert commands == _readme_commands()


def test_make_test_builds_everything_the_suite_needs() -> None:
    # setup: .venv; bins: control plane + argocd-lua; models: real GGUFs; test-deps: real-node pkgs
    assert {"setup", "bins", "models", "test-deps"} <= _make_prerequisites("test")
    assert {"setup", "bins", "models", "test-deps"} <= _make_prerequisites("dev")
    bins = re.search(r"^bins:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert bins and "build-argocd-lua.sh" in bins.group(1) and "build-bins.sh" in bins.group(1)
