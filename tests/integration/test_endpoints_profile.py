"""conf/endpoints.yaml end to end (issue 28, item 4): generators and an UltraFeedback judge on an OpenAI-compatible
server, the judge deciding the gate too, against the project's test server (tests/fake_openai_server.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import SMALL
from fake_openai_server import KEY_VARIABLE, running

from alignflow.conf.validation import ValidationConfig

PROFILE = Path(__file__).resolve().parents[2] / "conf" / "endpoints.yaml"


def profile_on(url: str, folder: Path) -> Path:
    """The shipped profile with its servers at `url`; the second generator named so the test server answers it
    briefly (it answers by model name: candidates of two lengths, which its judge rates apart)."""
    data = yaml.safe_load(PROFILE.read_text())
    for llm in [
        *data["generation"]["generators"],
        data["generation"]["judge"]["llm"],
        data["evaluation"]["judge"]["llm"],
    ]:
        llm["base_url"], llm["api_key_env"] = url, KEY_VARIABLE  # the test server wants a key, as hosted APIs do
    data["generation"]["generators"][1]["model"] = "policy-beta"
    # The test server's answers repeat the prompt ("<prompt> is explained here..."): a warning here, not an error.
    checks = ValidationConfig()
    data["validation"]["errors"] = [c for c in checks.errors if c != "prompt_in_response"]
    data["validation"]["warnings"] = [*checks.warnings, "prompt_in_response"]
    path = folder / "endpoints.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.integration
def test_the_endpoints_profile_runs_end_to_end_against_the_test_server(tmp_path, prefect_harness, ray_session):
    from typer.testing import CliRunner

    from alignflow.flows.cli import app

    small = [o for o in SMALL if not o.startswith("generation.generators=")]  # the profile's generators
    with running() as (fake, url):
        args = [
            "run",
            "--config",
            str(profile_on(url, tmp_path)),
            *small,
            "registry.model_name=test-endpoints",
            "generation.max_prompts=12",
            "validation.max_length=256",
            "training.max_length=256",
            "evaluation.max_prompts=6",
        ]
        result = CliRunner().invoke(app, args)
        judged = [r for r in fake.requests if r.kind == "judge"]
    assert result.exit_code == 0, result.output
    assert fake.count("generate", model="policy") >= 12 and fake.count("generate", model="policy-beta") >= 12
    # The judge rated the 4 candidates of every prompt (generation) and the head-to-head's pairs (evaluation).
    assert {r.prompt for r in judged} and all(r.status == 200 for r in judged)
    output = " ".join(result.output.split())
    assert "win rate against the base" in output and "test-endpoints version 1" in output
