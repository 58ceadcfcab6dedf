"""Registry: a real MLflow (SQLite) store, a version that loads and generates, aliases, the gate."""

from __future__ import annotations

from conftest import small_config

from alignflow.conf.evaluation import GateConfig
from alignflow.tasks.evaluation.head_to_head import HeadToHead
from alignflow.tasks.evaluation.stats import Interval
from alignflow.tasks.registry.gate import decide
from alignflow.tasks.registry.tracking import start_run
from alignflow.tasks.registry.versions import export_champion, log_model_version, tag_and_alias
from alignflow.tasks.runtime.state import artifact_root, tracking_uri


def _record(low: float, estimate: float, high: float, against: str = "base", lc: float | None = None) -> HeadToHead:
    lc_interval = Interval(lc, lc - 0.05, lc + 0.05) if lc is not None else Interval(estimate, low, high)
    return HeadToHead(
        against=against,
        prompt_set="builtin:eval",
        prompt_set_sha256="0" * 64,
        judge="offline",
        prompts=120,
        samples_per_prompt=4,
        pairs=480,
        wins=250,
        ties=20,
        losses=210,
        win_rate=Interval(estimate, low, high),
        length_controlled=lc_interval,
        candidate_words=30.0,
        opponent_words=29.0,
    )


FLUENT = {"chosen_nll": 2.0, "preference_accuracy": 0.8}


def test_gate_promotes_only_when_the_interval_clears_one_half():
    gate = GateConfig()
    passed = decide(_record(0.52, 0.56, 0.60), FLUENT, {"chosen_nll": 2.1}, gate)
    assert passed.passed and "0.560 [0.520, 0.600]" in passed.reason and "n=120 prompts x 4 samples" in passed.reason
    assert passed.tags()["gate.win_rate_ci95"] == "[0.5200, 0.6000]" and passed.tags()["gate.n_prompts"] == "120"
    assert "lower bound" in passed.rule
    # A good point estimate is not enough: its interval still covers a coin flip.
    coin = decide(_record(0.49, 0.58, 0.66), FLUENT, {"chosen_nll": 2.1}, gate)
    assert not coin.passed and "lower bound 0.490 <= 0.50" in coin.reason


def test_the_first_model_must_beat_the_base_model():
    first = decide(_record(0.18, 0.25, 0.32, against="base"), FLUENT, {"chosen_nll": 2.1}, GateConfig())
    assert not first.passed and "against the base" in first.reason and first.against == "base"


def test_margin_guard_rail_and_thresholds():
    record = _record(0.53, 0.57, 0.61, against="champion", lc=0.5)
    assert not decide(record, FLUENT, {"chosen_nll": 2.1}, GateConfig(min_win_rate_margin=0.05)).passed
    broken = decide(record, {"chosen_nll": 3.0}, {"chosen_nll": 2.5}, GateConfig(max_nll_increase=0.25))
    assert not broken.passed and "chosen NLL 3.000 > champion's 2.500 + 0.25" in broken.reason
    lc = decide(record, FLUENT, {"chosen_nll": 2.1}, GateConfig(thresholds={"win_rate_lc": 0.55}))
    assert not lc.passed and "win_rate_lc 0.5000 < 0.55" in lc.reason
    assert decide(record, FLUENT, None, GateConfig(thresholds={"preference_accuracy": 0.7})).passed


def test_registered_champion_loads_and_generates(tiny_model_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from alignflow.tasks.registry.tracking import log_metrics

    cfg = small_config("registry.model_name=test-register")
    uri = tracking_uri(cfg)
    run_id = start_run(
        uri, "test-register", "register", {"training.beta": "0.1"}, {"dataset_sha256": "abc"}, artifact_root(cfg)
    )
    log_metrics(uri, run_id, {"validate/valid": 48})
    # Registering writes no row twice (Postgres logs each unique-key clash as an ERROR): no metric of the run is
    # logged again (MLflow's log_model inside a run does, to link it to the model), and the registered model is
    # created only while it does not exist.
    sent, creates = [], []
    log_batch, create = MlflowClient.log_batch, MlflowClient.create_registered_model
    monkeypatch.setattr(MlflowClient, "log_batch", lambda self, *a, **k: sent.append(k) or log_batch(self, *a, **k))
    monkeypatch.setattr(
        MlflowClient, "create_registered_model", lambda self, *a, **k: creates.append(a) or create(self, *a, **k)
    )
    version = log_model_version(uri, run_id, "test-register", tiny_model_path)
    run2 = start_run(uri, "test-register", "register", {}, {}, artifact_root(cfg))
    assert log_model_version(uri, run2, "test-register", tiny_model_path) == str(int(version) + 1)
    assert not [m for batch in sent for m in batch.get("metrics") or []] and len(creates) == 1
    monkeypatch.undo()
    tag_and_alias(uri, "test-register", version, {"dataset_sha256": "abc"}, promote=True)

    client = MlflowClient(uri)
    # The lineage MLflow's log_model gives: the version's run, the logged model's source run, the run's output.
    registered = client.get_model_version("test-register", version)
    model_id = registered.source.removeprefix("models:/")
    assert registered.run_id == run_id and client.get_logged_model(model_id).source_run_id == run_id
    run = client.get_run(run_id)
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]
    assert "defaults/max_new_tokens" in run.data.params and run.data.metrics["validate/valid"] == 48
    champion = client.get_model_version_by_alias("test-register", "champion")
    assert str(champion.version) == version and champion.tags["dataset_sha256"] == "abc"
    assert str(client.get_model_version_by_alias("test-register", "challenger").version) == version

    mlflow.set_tracking_uri(uri)
    generator = mlflow.pyfunc.load_model("models:/test-register@champion")
    # The completion alone, sampled: one of a few answers of the tiny test model may be empty.
    out = generator.predict(["Why is the sky blue?"] * 6, params={"max_new_tokens": 8})
    assert all(isinstance(text, str) and not text.startswith("Why is the sky") for text in out) and any(out)

    exported = export_champion(uri, "test-register", cfg.runtime.home / "exported")
    assert (exported / "config.json").is_file()
