"""A deployment run's profile from outside the package (issue 30, item 1): an in-package name, a path or URL of a
YAML file on the worker, or a Prefect Variable; errors name the profile; the run records which one and its hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from alignflow.conf.loader import DEFAULT_PROFILE, ConfigError, load_config
from alignflow.flows.profiles import read_profile, resolve_config

EMBEDDED = DEFAULT_PROFILE.read_text()


def _team_profile(folder: Path, name: str = "team-nightly") -> Path:
    """The embedded default under another name: a team's profile kept outside the package."""
    path = folder / "team.yaml"
    path.write_text(EMBEDDED.replace("name: alignflow-smollm2", f"name: {name}", 1))
    return path


def _error(profile: str) -> str:
    with pytest.raises(ConfigError) as caught:
        resolve_config(profile)
    return str(caught.value)


def test_an_in_package_name_reads_its_conf_file():
    source = read_profile("pipeline")
    assert source.text == EMBEDDED and source.where == str(DEFAULT_PROFILE)
    assert source.lineage() == {"profile": "pipeline", "profile_sha256": hashlib.sha256(EMBEDDED.encode()).hexdigest()}
    assert resolve_config("pipeline") == load_config(DEFAULT_PROFILE)
    assert resolve_config("recipes/orpo").training.method == "orpo"


def test_a_path_outside_the_package(tmp_path):
    path = _team_profile(tmp_path)
    config = resolve_config(str(path), beta=0.3, overrides=["training.max_steps=5"])
    assert config.name == "team-nightly"
    assert config.training.beta == 0.3 and config.training.max_steps == 5  # knobs and overrides as for a name
    source = read_profile(str(path))
    assert source.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert source.lineage()["profile"] == str(path)


def test_a_file_url_and_a_home_path(tmp_path, monkeypatch):
    path = _team_profile(tmp_path)
    assert resolve_config(path.as_uri()).name == "team-nightly"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_config("~/team.yaml").name == "team-nightly"


def test_a_missing_file_or_protocol_is_named(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert _error(str(missing)) == f"profile {str(missing)!r}: no such file"
    assert f"profile {missing.as_uri()!r}: no such file" == _error(missing.as_uri())
    assert f"profile {str(tmp_path)!r}: is a directory" in _error(str(tmp_path))
    message = _error("nosuchproto://bucket/team.yaml")
    assert message.startswith("profile 'nosuchproto://bucket/team.yaml': cannot read it: ValueError")


def test_an_unknown_name_lists_the_names_and_the_other_forms():
    message = _error("nightly")
    assert message.startswith("profile 'nightly': not an in-package name (pipeline, cluster")
    assert "a path or URL of a YAML file" in message and "variable:NAME" in message


def test_text_that_is_not_yaml_or_not_a_mapping(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("training: [unclosed\n")
    assert _error(str(broken)).startswith(f"profile {str(broken)!r}: not valid YAML")
    listed = tmp_path / "listed.yaml"
    listed.write_text("- a\n- b\n")
    assert _error(str(listed)) == f"profile {str(listed)!r}: the top level must be a mapping of sections, not list"


def test_validation_errors_name_the_profile_and_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  method: dpo\n  learning_rat: 1e-4\n  beta: lots\n")
    message = _error(str(bad))
    assert message.startswith(f"profile {str(bad)!r}: invalid config")
    assert "training.learning_rat: unknown key" in message and "training.beta" in message
    with pytest.raises(ConfigError, match=r"bad.yaml' with overrides training.max_steps=1: invalid config"):
        resolve_config(str(bad), max_steps=1)


# --- Prefect Variables, on a real Prefect API (the test harness) ---


def test_a_prefect_variable_holds_the_profile(prefect_harness):
    from prefect.variables import Variable

    text = "# the team's nightly, kept in Prefect\nname: team-variable\ntraining:\n  method: orpo\n"
    Variable.set("team_profile", text, overwrite=True)
    source = read_profile("variable:team_profile")
    assert source.text == text and source.sha256 == hashlib.sha256(text.encode()).hexdigest()
    config = resolve_config("variable:team_profile", beta=0.2)
    assert (config.name, config.training.method, config.training.beta) == ("team-variable", "orpo", 0.2)

    Variable.set("team_profile_json", {"name": "team-json", "training": {"method": "cpo"}}, overwrite=True)
    assert resolve_config("variable:team_profile_json").training.method == "cpo"  # a JSON object: the mapping


def test_prefect_variable_errors_name_the_variable(prefect_harness):
    from prefect.variables import Variable

    assert _error("variable:no_such_profile") == (
        "profile 'variable:no_such_profile': no Prefect Variable named 'no_such_profile' (Prefect UI: Variables)"
    )
    Variable.set("profile_number", 3, overwrite=True)
    assert "Prefect Variable 'profile_number' holds a int, not YAML" in _error("variable:profile_number")
    Variable.set("profile_typo", "training:\n  betta: 0.1\n", overwrite=True)
    message = _error("variable:profile_typo")
    assert message.startswith("profile 'variable:profile_typo' (Prefect Variable): invalid config")
    assert "training.betta: unknown key" in message
    Variable.set("profile_broken", "training: [unclosed", overwrite=True)
    assert _error("variable:profile_broken").startswith(
        "profile 'variable:profile_broken' (Prefect Variable): not valid"
    )


def test_the_deployment_run_records_the_profile_and_its_hash(prefect_harness, tmp_path, monkeypatch):
    """run-alignment hands the profile's source and sha256 to the pipeline's lineage (MLflow tags next to
    config_hash) and names it in a `profile` artifact; the pipeline itself is stubbed here."""
    from types import SimpleNamespace

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from alignflow.flows import deployments

    handed: list[tuple[str, dict[str, str]]] = []
    fake = SimpleNamespace(fn=lambda config, lineage: handed.append((config.name, lineage)) or {"ran": config.name})
    monkeypatch.setattr(deployments, "alignment", fake)
    path = _team_profile(tmp_path, "team-recorded")
    assert deployments.run_alignment(profile=str(path)) == {"ran": "team-recorded"}
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert handed == [("team-recorded", {"profile": str(path), "profile_sha256": sha})]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["profile"])))
    assert any(str(path) in str(a.data) and sha in str(a.data) for a in found)


def test_deploy_checks_a_default_profile_outside_the_package(tmp_path):
    """`alignflow serve/deploy --profile PATH` validate it before anything starts; a Variable is left to the run."""
    import typer

    from alignflow.flows.cli.serve import _check

    assert _check(str(_team_profile(tmp_path)), ["training.max_steps=3"]).name == "team-nightly"
    with pytest.raises(typer.Exit) as caught:
        _check(str(tmp_path / "nope.yaml"), [])
    assert caught.value.exit_code == 2
    assert _check("variable:team_profile", []).name == load_config().name  # not read: the server may be down
