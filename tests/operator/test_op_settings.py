"""Operator settings derived from the environment (pure functions, no cluster)."""

from __future__ import annotations

from slm_operator.cli import build_parser
from slm_operator.settings import priority_from_env


def test_priority_differs_between_replicas_of_one_deployment() -> None:
    first = priority_from_env({"POD_ID": "slm-operator-7d9c5b6f4-abcde"})
    second = priority_from_env({"POD_ID": "slm-operator-7d9c5b6f4-xyz12"})
    assert first != second
    assert first > 0 and second > 0


def test_priority_is_stable_for_one_pod_and_falls_back_to_hostname() -> None:
    assert priority_from_env({"POD_ID": "pod-a"}) == priority_from_env({"POD_ID": "pod-a"})
    assert priority_from_env({"HOSTNAME": "pod-a"}) == priority_from_env({"POD_ID": "pod-a"})


def test_priority_is_zero_without_an_identity() -> None:
    assert priority_from_env({}) == 0


def test_run_accepts_an_explicit_priority() -> None:
    args = build_parser().parse_args(["run", "--peering", "slm", "--priority", "7"])
    assert args.priority == 7
