"""Ray start-up shared by every stage (tasks/runtime/ray.py): the workers' setup hook, a local Ray's settings."""

from __future__ import annotations

import logging
import subprocess
import sys

from alignflow.tasks.runtime.ray import PREEMPTION_WATCHER, local_ray_env, quiet_ray_logs


def test_the_worker_setup_hook_quiets_ray_train_without_importing_it():
    """quiet_ray_logs runs in every Ray worker: it names Ray Train's context logger (named after its file)
    by a built path, so that the workers that never train do not import ray.train (~1.5 s each)."""
    probe = "import sys; from alignflow.tasks.runtime.ray import quiet_ray_logs as q; q(); print('ray.train' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.NOTSET)
    quiet_ray_logs()
    assert logging.getLogger(context.__file__).level == logging.WARNING


def test_a_local_ray_trains_without_the_preemption_watcher(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(PREEMPTION_WATCHER, raising=False)
    assert local_ray_env(None) == {PREEMPTION_WATCHER: "0"}
    # A cluster keeps Ray's default (its nodes can be drained); a value the user set wins.
    assert local_ray_env("10.0.0.1:6379") == {}
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert local_ray_env(None) == {}
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setenv(PREEMPTION_WATCHER, "1")
    assert local_ray_env(None) == {PREEMPTION_WATCHER: "1"}
