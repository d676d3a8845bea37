"""Worker configuration: every field is a documented flag and an AIGIS_* variable; CLI beats env beats default."""

from __future__ import annotations

import subprocess
import sys

import pytest

from worker.cli import build_parser
from worker.config import WorkerConfig, env_var, env_var_names, load_config


def test_command_line_beats_environment_beats_default() -> None:
    parser = build_parser()
    env = {"AIGIS_MAX_BATCH": "16", "AIGIS_INPUT_TOPIC": "from-env", "AIGIS_CREATE_TOPICS": "true"}
    cfg = load_config(parser.parse_args(["--max-batch", "8"]), env)
    assert cfg.max_batch == 8
    assert cfg.input_topic == "from-env"
    assert cfg.create_topics is True
    assert cfg.verdict_topic == WorkerConfig.model_fields["verdict_topic"].default


def test_invalid_values_fail_with_the_flag_and_variable_named() -> None:
    with pytest.raises(SystemExit) as exc:
        load_config(build_parser().parse_args([]), {"AIGIS_MAX_BATCH": "0"})
    assert "--max-batch" in str(exc.value) and "AIGIS_MAX_BATCH" in str(exc.value)


def test_help_documents_every_option_and_variable() -> None:
    out = subprocess.run([sys.executable, "-m", "worker", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for name in WorkerConfig.model_fields:
        assert "--" + name.replace("_", "-") in text, name
        assert env_var(name) in text, name


def test_env_var_names_cover_every_field() -> None:
    assert env_var_names() == {"AIGIS_" + n.upper() for n in WorkerConfig.model_fields}


def test_provenance_options(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from schemas.provenance import ProvenancePolicy

    parser = build_parser()
    assert load_config(parser.parse_args([]), {}).provenance_policy is ProvenancePolicy.decide
    assert load_config(parser.parse_args([]), {}).provenance_trust_anchors is None
    anchors = tmp_path / "anchors.pem"
    anchors.write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = load_config(parser.parse_args(["--provenance-policy", "annotate", "--provenance-trust-anchors", str(anchors)]), {})
    assert cfg.provenance_policy is ProvenancePolicy.annotate and cfg.provenance_trust_anchors == anchors
    with pytest.raises(SystemExit, match="--provenance-policy"):
        load_config(parser.parse_args(["--provenance-policy", "sometimes"]), {})
    with pytest.raises(SystemExit, match="is not a file"):
        load_config(parser.parse_args([]), {"AIGIS_PROVENANCE_TRUST_ANCHORS": str(tmp_path / "missing.pem")})
