"""Registry: a real MLflow (SQLite) store, a version that loads and generates, aliases, the gate."""

from __future__ import annotations

from conftest import small_config

from alignflow.conf.evaluation import GateConfig
from alignflow.tasks.registry.gate import decide
from alignflow.tasks.registry.tracking import start_run
from alignflow.tasks.registry.versions import export_champion, log_model_version, tag_and_alias
from alignflow.tasks.runtime.state import artifact_root, tracking_uri


def test_decide():
    gate = GateConfig(metric="preference_accuracy", min_improvement=0.05)
    assert decide({"preference_accuracy": 0.6}, None, gate)[0]
    assert decide({"preference_accuracy": 0.7}, {"preference_accuracy": 0.6}, gate)[0]
    promoted, reason = decide({"preference_accuracy": 0.62}, {"preference_accuracy": 0.6}, gate)
    assert not promoted and "does not beat" in reason
    promoted, reason = decide({"preference_accuracy": 0.9}, None, gate, has_champion=True)
    assert not promoted and "by hand" in reason


def test_registered_champion_loads_and_generates(tiny_model_path):
    import mlflow
    from mlflow import MlflowClient

    cfg = small_config("registry.model_name=test-register")
    uri = tracking_uri(cfg)
    run_id = start_run(
        uri, "test-register", "register", {"training.beta": "0.1"}, {"dataset_sha256": "abc"}, artifact_root(cfg)
    )
    version = log_model_version(uri, run_id, "test-register", tiny_model_path)
    tag_and_alias(uri, "test-register", version, {"dataset_sha256": "abc"}, promote=True)

    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("test-register", "champion")
    assert str(champion.version) == version and champion.tags["dataset_sha256"] == "abc"
    assert str(client.get_model_version_by_alias("test-register", "challenger").version) == version

    mlflow.set_tracking_uri(uri)
    generator = mlflow.pyfunc.load_model("models:/test-register@champion")
    out = generator.predict(["Why is the sky blue?"], params={"max_new_tokens": 8})
    assert isinstance(out[0], str) and out[0]

    exported = export_champion(uri, "test-register", cfg.runtime.home / "exported")
    assert (exported / "config.json").is_file()
