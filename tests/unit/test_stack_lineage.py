"""Lineage from deployments: the code version (commit, or package version + code hash without git), and
MLflow's source and user tags, recorded however the run was started (a worker's scratch folder included)."""

from __future__ import annotations

import re
import shutil
import subprocess

from alignflow.tasks.runtime import code_version as cv


def test_the_commit_is_read_where_the_code_lies_not_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a Prefect process worker runs flows in a scratch folder like this one
    cv.code_version.cache_clear()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cv.PACKAGE_ROOT, capture_output=True, text=True)
    if head.returncode:
        return  # an installed copy without git: the next test covers it
    assert cv.code_version().removesuffix("-dirty") == head.stdout.strip()
    tags = cv.context_tags()
    assert tags["mlflow.source.git.commit"] == head.stdout.strip()


def test_without_git_the_package_version_and_a_hash_of_the_code(tmp_path, monkeypatch):
    copy = tmp_path / "installed"
    for folder in ("conf", "flows", "tasks"):
        shutil.copytree(cv.PACKAGE_ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cv, "PACKAGE_ROOT", copy)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above the copy either
    cv.code_version.cache_clear()
    first = cv.code_version()
    assert re.fullmatch(r"\d[\w.]*\+sha256\.[0-9a-f]{12}", first), first
    assert "mlflow.source.git.commit" not in cv.context_tags()
    (copy / "flows" / "ops" / "stack.py").write_text(
        (copy / "flows" / "ops" / "stack.py").read_text() + "\n# changed\n"
    )
    cv.code_version.cache_clear()
    assert cv.code_version() != first  # another code, another version
    cv.code_version.cache_clear()


def test_mlflow_runs_get_source_user_and_code_version(tmp_path, monkeypatch):
    from alignflow.tasks.registry import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.start_run(uri, "lineage", "r", {"a": "1"}, {"method": "dpo"}, (tmp_path / "art").as_uri())
    tags = tracking.mlflow_client(uri).get_run(run_id).data.tags
    assert tags["mlflow.user"] == "alice"
    assert tags["mlflow.source.name"] and tags["mlflow.source.type"] == "LOCAL"
    assert tags["code_version"] == tracking.git_commit() and tags["method"] == "dpo"
