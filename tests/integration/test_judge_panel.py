"""Two judges of the same head-to-head (issue 28, item 3): each one's win rate with its interval, and how far
they agree (share, Cohen's kappa, n), in the CLI summary, the model card and the Prefect evaluation artifact.

The second judge is an UltraFeedback LLM judge on the project's OpenAI-compatible test server, which rates
longer answers higher: a judge that disagrees with the reference-based offline scorer often enough to matter.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SMALL, small_config
from fake_openai_server import endpoint, running
from preference_files import plain, write

EVAL = ["evaluation.max_prompts=8", "evaluation.samples_per_prompt=2", "evaluation.max_new_tokens=12"]


@pytest.mark.integration
def test_a_run_with_two_judges_reports_both_win_rates_and_their_agreement(tmp_path, prefect_harness, ray_session):
    import mlflow
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from typer.testing import CliRunner

    from alignflow.flows.cli import app
    from alignflow.tasks.runtime.state import tracking_uri

    model = "test-judge-panel"
    with running() as (fake, url):
        judge = endpoint(url, "judge-m", temperature=0.0, timeout=5.0, max_retries=2)
        args = [
            "run",
            *SMALL,
            f"generation.preference_data={write(tmp_path / 'pairs.jsonl', plain())}",
            f"registry.model_name={model}",
            f"evaluation.judges=[offline, {{kind: ultrafeedback, llm: {judge}, retry_backoff: 0.1}}]",
            "registry.gate.judges=all",
            *EVAL,
        ]
        result = CliRunner().invoke(app, args)
        assert fake.count("judge") > 0
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "judge offline:" in output and "judge ultrafeedback:judge-m:" in output
    assert "offline and ultrafeedback:judge-m agree on" in output and "n=16 pairs" in output
    assert "Cohen's kappa" in output and "(all of 2 decide)" in output

    client = MlflowClient(tracking_uri(small_config()))
    [version] = client.search_model_versions(f"name='{model}'")
    card = (tmp_path / "card").resolve()
    mlflow.set_tracking_uri(tracking_uri(small_config()))
    location = client.get_logged_model(version.source.removeprefix("models:/")).artifact_location
    path = mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/README.md", dst_path=str(card))
    text = Path(path).read_text(encoding="utf-8")
    assert "### Judges (2" in text and "| ultrafeedback:judge-m |" in text and "Cohen's kappa" in text
    metrics = client.get_run(version.run_id).data.metrics
    assert {"eval/judge2/win_rate_low", "eval/agreement/judge1_judge2", "eval/agreement/judge1_judge2_n_pairs"} <= set(
        metrics
    )

    with get_client(sync_client=True) as prefect:
        [artifact] = [a for a in prefect.read_artifacts(limit=200) if a.key == "evaluation-summary"][-1:]
    assert "### Judges (2" in artifact.data and "Cohen's kappa" in artifact.data
