"""comparison.recipes: recipes start from the training section, grids expand into readable names, and
config errors name the key (the CLI exits 2 before anything starts)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from alignflow.conf.comparison import expand_recipes, grid_points, knob_label
from alignflow.conf.loader import ConfigError, load_config
from alignflow.tasks.evaluation.comparison import best_row, cost_ratio, failed_row, short_reason, slug

REPO = Path(__file__).resolve().parents[2]
COMPARE = REPO / "conf" / "compare.yaml"
ALIGNFLOW = REPO / ".venv" / "bin" / "alignflow"


def recipes(*overrides: str, profile: Path | None = None):
    return expand_recipes(load_config(profile, list(overrides)).comparison.recipes)


def test_grid_expands_in_declaration_order_with_readable_names():
    got = recipes(
        "comparison.recipes.orpo.method=orpo",
        "comparison.recipes.orpo.grid={beta: [0.1, 0.2], learning_rate: [0.0001]}",
        "comparison.recipes.dpo.grid.loss_type=[sigmoid, [sigmoid, sft]]",
        "comparison.recipes.sd.sft.enabled=true",
        "comparison.recipes.sd.grid.sft.learning_rate=[0.001, 0.0001]",  # a sub-section knob, as an override
    )
    assert [r.name for r in got] == [
        "orpo[beta=0.1,learning_rate=0.0001]",
        "orpo[beta=0.2,learning_rate=0.0001]",
        "dpo[loss_type=sigmoid]",
        "dpo[loss_type=sigmoid+sft]",
        "sd[sft.learning_rate=0.001]",
        "sd[sft.learning_rate=0.0001]",
    ]
    assert [r.training.beta for r in got[:2]] == [0.1, 0.2] and got[0].training.method == "orpo"
    assert got[2].training.loss_type == ["sigmoid"] and got[3].training.loss_type == ["sigmoid", "sft"]
    assert got[4].training.sft.enabled and got[5].training.sft.learning_rate == 0.0001
    assert len(grid_points({"a": [1, 2], "b": [3, 4, 5]})) == 6 and knob_label(True) == "true"


def test_recipe_is_the_training_section_with_its_keys_on_top():
    got = {
        r.name: r.training
        for r in recipes(
            "training.learning_rate=0.003",
            "training.scaling.num_workers=1",
            "comparison.recipes.a.beta=0.5",
            "comparison.recipes.b.scaling.resources_per_worker={CPU: 0.5}",  # a nested section merges
        )
    }
    assert got["a"].learning_rate == 0.003 and got["a"].beta == 0.5 and got["b"].beta == 0.1
    assert got["b"].scaling.num_workers == 1 and got["b"].scaling.resources_per_worker == {"CPU": 0.5}


def test_the_shipped_comparison_profile():
    head = COMPARE.read_text().splitlines()[:6]
    assert head[0].startswith("#") and any("alignflow compare --config conf/compare.yaml" in line for line in head)
    got = recipes(profile=COMPARE)
    assert [r.name for r in got] == [
        "sft-dpo", "orpo[beta=0.1]", "orpo[beta=0.25]", "dpo[loss_type=sigmoid]", "dpo[loss_type=ipo]",
    ]  # fmt: skip
    sft_dpo = got[0].training
    assert sft_dpo.sft.enabled and sft_dpo.method == "dpo" and not got[1].training.sft.enabled
    assert all(r.training.scaling.resources_per_worker == {"CPU": 0.5} for r in got)
    assert load_config().comparison.recipes == {}  # the embedded default compares nothing


@pytest.mark.parametrize(
    ("override", "key", "says"),
    [
        ("comparison.recipes.orpo.grid.beta=[0.1, 0]", "comparison.recipes.orpo.grid", "grid point [beta=0]"),
        ("comparison.recipes.orpo.bta=1", "comparison.recipes.orpo.bta", "unknown key"),
        ("comparison.recipes.orpo.grid.bta=[1]", "comparison.recipes.orpo.grid", "bta: unknown key"),
        ("comparison.recipes.orpo.grid.beta=[]", "comparison.recipes.orpo.grid", "at least one value"),
        ("comparison.recipes.orpo.grid.beta=0.1", "comparison.recipes.orpo.grid.beta", "valid list"),
        ("comparison.recipes.c.method=cpo", "comparison.recipes.c", "for method cpo"),
        ("comparison.max_parallel=0", "comparison.max_parallel", "greater than or equal to 1"),
        ("comparison.metric=loss", "comparison.metric", "Input should be"),
        ("comparison.recipes.o.model_name_or_path=/m", "(top level)", "comparison.recipes.o.model_name_or_path"),
    ],
)
def test_config_errors_name_the_key(override, key, says):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["training.loss_type=[sigmoid, sft]", override])
    assert f"  {key}: " in str(info.value) and says in str(info.value)


def test_grid_names_must_not_collide():
    with pytest.raises(
        ConfigError, match=r"comparison: Value error, recipes expand to the same name twice: x\[beta=0.1\]"
    ):
        load_config(None, ["comparison.recipes.x.grid.beta=[0.1, 0.1]"])
    with pytest.raises(ConfigError, match=r"comparison.recipes.x\[b\].\[key\]: String should match pattern"):
        load_config(None, ['comparison.recipes={"x[b]": {beta: 0.1}}'])  # brackets are for grid points only


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["comparison.recipes.orpo.grid.beta=[0]"], "comparison.recipes.orpo.grid: Value error, grid point [beta=0]"),
        (["--config", "conf/pipeline.yaml"], "comparison.recipes: no recipes to compare"),
    ],
)
def test_cli_exits_2_naming_the_key_before_anything_starts(args, says):
    done = subprocess.run([str(ALIGNFLOW), "compare", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert says in " ".join(done.stderr.split())


def test_table_helpers():
    assert slug("orpo[beta=0.1]") == "orpo-beta-0.1"
    ray_error = "Training failed.\nTraceback ...\n  File x\nValueError: bad schedule\n\nThe above exception ..."
    assert short_reason(RuntimeError(ray_error)) == "ValueError: bad schedule"
    rows = [
        {"recipe": "a", "status": "completed", "win_rate": 0.5, "wall_s": 10.0, "compute_s": 4.0,
         "forward_passes_per_example": 2.0, "forward_passes": 100},
        {"recipe": "b", "status": "completed", "win_rate": 0.75, "wall_s": 20.0, "compute_s": 10.0,
         "forward_passes_per_example": 5.0, "forward_passes": 400},
        failed_row("c", load_config().training, "train: boom"),
    ]  # fmt: skip
    assert best_row(rows, "win_rate")["recipe"] == "b"
    assert cost_ratio(rows, "a", "b") == {"wall_s": 0.5, "compute_s": 0.4, "forward_passes_per_example": 0.4,
                                          "forward_passes": 0.25}  # fmt: skip
    assert cost_ratio(rows, "a", "c")["wall_s"] is None


def test_cli_prints_the_comparison_summary_it_is_given(capsys, tmp_path):
    """`alignflow compare` reads the flow's ComparisonSummary by attribute: the table, a failed recipe's
    reason, the registry's verdict on the best."""
    from alignflow.flows.cli.pipeline import _print_comparison
    from alignflow.flows.compare import ComparisonSummary, RegisteredBest
    from alignflow.tasks.runtime.state import Ref

    training = load_config(None, []).training
    summary = ComparisonSummary(
        mlflow_run_id="parent-run",
        flow_run_id="flow-run",
        dataset=Ref(uri="file:///pairs", sha256="0" * 64),
        recipes=[failed_row("broken", training, "train: no-such-backend")],
        children={"broken": "child-run"},
        best="broken",  # only the printing is under test: the best need not be a completed row here
        metric="win_rate_low",
        registry=RegisteredBest(model="m", version="3", promoted=False, reason="below the threshold"),
        seconds={"data": 1.0, "recipes": 2.0},
    )
    _print_comparison(summary, 3.0, tmp_path)
    err = capsys.readouterr().err
    assert "best by win_rate_low: broken" in err and "broken: train: no-such-backend" in err
    assert "broken -> m version 3: not promoted (below the threshold)" in err and "parent-run" in err
