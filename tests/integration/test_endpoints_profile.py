"""conf/endpoints.yaml end to end against the project's test server (tests/fake_openai_server.py), with two
evaluation judges (issue 28, items 3 and 4).

Generators and an UltraFeedback judge on an OpenAI-compatible server write and rate the pairs; the head-to-head
is judged by the profile's LLM judge and the offline scorer, each with its win rate and interval, and their
agreement (share, Cohen's kappa, n) reaches the CLI summary, the model card, MLflow and the Prefect artifact. One
whole flow covers both: each costs ~25 s here, and the suite has a time budget. The test server's judge rates
longer answers higher, so it disagrees with the reference-based offline scorer often enough to matter.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import SMALL, small_config
from fake_openai_server import KEY_VARIABLE, running

from alignflow.conf.validation import ValidationConfig

PROFILE = Path(__file__).resolve().parents[2] / "conf" / "endpoints.yaml"
NAME = "test-endpoints"


def profile_on(url: str, folder: Path) -> Path:
    """The shipped profile with its servers at `url`, its LLM judge first of two evaluation judges; the second
    generator named so the test server answers it briefly (it answers by model name: candidates of two lengths,
    which its judge rates apart)."""
    data = yaml.safe_load(PROFILE.read_text())
    for llm in [
        *data["generation"]["generators"],
        data["generation"]["judge"]["llm"],
        data["evaluation"]["judge"]["llm"],
    ]:
        llm["base_url"], llm["api_key_env"] = url, KEY_VARIABLE  # the test server wants a key, as hosted APIs do
    data["generation"]["generators"][1]["model"] = "policy-beta"
    data["evaluation"]["judges"] = [data["evaluation"].pop("judge"), "offline"]
    # The test server's answers repeat the prompt ("<prompt> is explained here..."): a warning here, not an error.
    checks = ValidationConfig()
    data["validation"]["errors"] = [c for c in checks.errors if c != "prompt_in_response"]
    data["validation"]["warnings"] = [*checks.warnings, "prompt_in_response"]
    path = folder / "endpoints.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def endpoints_run(tmp_path_factory, prefect_harness, ray_session):
    from typer.testing import CliRunner

    from alignflow.flows.cli import app

    small = [o for o in SMALL if not o.startswith("generation.generators=")]  # the profile's generators
    with running() as (fake, url):
        args = [
            "run",
            "--config",
            str(profile_on(url, tmp_path_factory.mktemp("endpoints"))),
            *small,
            f"registry.model_name={NAME}",
            "generation.max_prompts=12",
            "validation.max_length=256",
            "training.max_length=256",
            "evaluation.max_prompts=6",
            "registry.gate.judges=all",
        ]
        result = CliRunner().invoke(app, args)
        return result, fake


@pytest.mark.integration
def test_the_endpoints_profile_runs_end_to_end_against_the_test_server(endpoints_run):
    result, fake = endpoints_run
    assert result.exit_code == 0, result.output
    assert fake.count("generate", model="policy") >= 12 and fake.count("generate", model="policy-beta") >= 12
    # The judge rated the 4 candidates of every prompt (generation) and the head-to-head's pairs (evaluation).
    judged = [r for r in fake.requests if r.kind == "judge"]
    assert judged and all(r.status == 200 for r in judged)
    assert f"{NAME} version 1" in " ".join(result.output.split())


@pytest.mark.integration
def test_two_judges_report_both_win_rates_and_their_agreement(endpoints_run):
    import mlflow
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client

    from alignflow.tasks.runtime.state import tracking_uri

    result, _ = endpoints_run
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "judge ultrafeedback:judge:" in output and "judge offline:" in output
    assert "ultrafeedback:judge and offline agree on" in output and "n=12 pairs" in output
    assert "Cohen's kappa" in output and "(all of 2 decide)" in output

    client = MlflowClient(tracking_uri(small_config()))
    [version] = client.search_model_versions(f"name='{NAME}'")
    mlflow.set_tracking_uri(tracking_uri(small_config()))
    location = client.get_logged_model(version.source.removeprefix("models:/")).artifact_location
    card = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/README.md")).read_text(encoding="utf-8")
    assert "### Judges (2" in card and "| offline |" in card and "Cohen's kappa" in card
    metrics = client.get_run(version.run_id).data.metrics
    assert {"eval/judge2/win_rate_low", "eval/agreement/judge1_judge2", "eval/agreement/judge1_judge2_n_pairs"} <= set(
        metrics
    )
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as prefect:
        found = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["evaluation-summary"]))
        )
        summaries = [a.data for a in found]
    [summary] = [s for s in summaries if s.startswith(f"## {NAME} v1")]
    assert "### Judges (2" in summary and "Cohen's kappa" in summary
