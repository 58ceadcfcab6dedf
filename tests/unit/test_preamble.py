"""The preamble both flows run (flows/preamble.py): its stages on the clock, in order, and what it hands on.

The stages themselves are stubbed: what is checked here is the wiring the alignment and comparison
flows share (the champion's model feeds the data stages, the storage rule, the timings)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import small_config

from alignflow.flows import preamble as pre
from alignflow.tasks.registry.base_guard import ForeignChampion
from alignflow.tasks.runtime.state import Ref


def _stub_stages(monkeypatch, tmp_path, champion):
    calls = []
    base, data = Ref(uri="file:///base", sha256="b"), SimpleNamespace(base=None)
    monkeypatch.setattr(pre, "configure_environment", lambda config: tmp_path)
    monkeypatch.setattr(pre, "check_champion_base", lambda config: calls.append(("champion_base", None)))
    monkeypatch.setattr(pre, "base_model", lambda training, models: calls.append(("base_model", models)) or base)
    monkeypatch.setattr(pre, "champion", lambda registry, uri, dest: calls.append(("champion", dest)) or champion)

    def prepare(config, root, base_ref, champion_model):
        calls.append(("data", champion_model))
        data.base = base_ref
        return data

    monkeypatch.setattr(pre, "prepare_data", prepare)
    return calls, base, data


def test_stages_run_in_order_each_on_the_clock(monkeypatch, tmp_path):
    opponent = SimpleNamespace(model=Ref(uri="file:///champion", sha256="c"))
    calls, base, data = _stub_stages(monkeypatch, tmp_path, opponent)
    clock = pre.StageClock()
    prep = pre.preamble(small_config(), clock)
    assert [c[0] for c in calls] == ["champion_base", "base_model", "champion", "data"]
    assert calls[1][1] == tmp_path / "models" and calls[2][1] == tmp_path / "champions" / "local"
    assert calls[3][1] is opponent.model  # the champion's model generates with `registry:champion`
    assert list(clock.seconds) == ["base_model", "champion", "data"]
    assert prep.root == tmp_path and prep.run_key == "local" and prep.data is data and prep.base is base
    assert prep.opponent is opponent and prep.storage == str(tmp_path / "ray")


def test_no_champion_yet_and_remote_storage(monkeypatch, tmp_path):
    calls, _, _ = _stub_stages(monkeypatch, tmp_path, None)
    prep = pre.preamble(small_config("training.storage=s3://bucket/checkpoints"), pre.StageClock())
    assert calls[3] == ("data", None) and prep.opponent is None
    assert prep.storage == "s3://bucket/checkpoints"


def test_another_base_models_champion_stops_before_the_first_stage(monkeypatch, tmp_path):
    """A deployment run has no CLI in front of it: the flow's own guard (tests/unit/test_champion_base.py)."""
    calls, _, _ = _stub_stages(monkeypatch, tmp_path, None)

    def foreign(config):
        raise ForeignChampion("trained from base model A, but training.model_name_or_path is B")

    monkeypatch.setattr(pre, "check_champion_base", foreign)
    with pytest.raises(ForeignChampion, match="base model A"):
        pre.preamble(small_config(), pre.StageClock())
    assert calls == []  # no base model built, no champion exported, no data generated
