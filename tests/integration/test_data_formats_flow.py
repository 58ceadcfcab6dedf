"""The user's own pairs through the whole flow: `alignflow run generation.preference_data=FILE`."""

from __future__ import annotations

import json

import pytest
from conftest import SMALL, STATE, small_config
from preference_files import ROWS, ultrafeedback, write

EVAL = ["evaluation.max_prompts=12", "evaluation.samples_per_prompt=2", "evaluation.max_new_tokens=12"]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "rows"),
    # The UltraFeedback layout through the flow gzipped: conversations, their turns in the split, a compressed file.
    # Plain prompt/chosen/rejected strings take the flow path every generated dataset takes (tests/integration/
    # test_flow_e2e.py), and a .jsonl of them is imported and validated without a flow (test_generate_byo.py): a whole
    # flow costs ~25 s, and the suite has a time budget.
    [("uf.jsonl.gz", ultrafeedback)],
    ids=["ultrafeedback-gz"],
)
def test_run_with_preference_data_registers_a_version(tmp_path, prefect_harness, ray_session, name, rows):
    """`alignflow run generation.preference_data=FILE`: generate skipped, validate (0 quarantined), train,
    evaluate, register."""
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from alignflow.flows.cli import app
    from alignflow.tasks.runtime.state import tracking_uri

    path = write(tmp_path / name, rows())
    model = f"test-byo-{name.replace('.', '-')}"
    args = ["run", *SMALL, f"generation.preference_data={path}", f"registry.model_name={model}", *EVAL]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(MlflowClient(tracking_uri(small_config())).search_model_versions(f"name='{model}'")) == 1
    # The generate stage's folder holds the snapshot's report (source = the file given) and the validation.
    folders = [
        p.parent for p in STATE.glob("datasets/*/report.json") if json.loads(p.read_text()).get("source") == str(path)
    ]
    reports = [json.loads(p.read_text()) for folder in folders for p in folder.glob("validation/*/report.json")]
    assert reports and all(r["valid"] == len(ROWS) and r["quarantined"] == 0 for r in reports), reports
