"""`slm-gateway`'s command line: usage errors are exit code 2 with a message naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from slm_gateway.cli import load_config, main


def test_without_a_mode_it_says_what_to_give(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "--config FILE" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("deployments: [{name: a, model: m, endpoints: [10.0.0.1:8080]}]\n", "must start with http://"),
        ("deployments: [{name: a, model: m, endpoints: []}]\nrouting: {loadFactor: 0.5}\n", "loadFactor"),
        ("colour: blue\n", "colour"),
    ],
)
def test_bad_config_files_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, complaint: str
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    assert main(["--config", str(path)]) == 2
    assert complaint in capsys.readouterr().err


def test_a_bad_keys_file_is_a_usage_error_without_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text("- {id: a, key: sk-very-secret-0001}\n- {id: a, key: sk-very-secret-0002}\n")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("deployments: []\n")
    assert main(["--config", str(cfg), "--keys-file", str(keys)]) == 2
    err = capsys.readouterr().err
    assert "duplicate key ids: a" in err and "sk-very-secret" not in err


def test_flags_override_the_file(tmp_path: Path) -> None:
    import argparse

    cfg = tmp_path / "gw.yaml"
    cfg.write_text("server: {port: 9000}\naudit: {stdout: true}\n")
    args = argparse.Namespace(
        config=cfg,
        keys_file="/k.yaml",
        upstream_key_file="/upstream/key",
        host="127.0.0.1",
        port=9100,
        audit_log_content=True,
    )
    config = load_config(args)
    assert (config.server.host, config.server.port) == ("127.0.0.1", 9100)
    assert config.keys_file == "/k.yaml" and config.audit.log_content is True
    assert config.upstream_key_file == "/upstream/key"
