"""The YAML profiles under conf/: they load, say how to launch them, and agree with the schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignflow.conf.loader import flatten, load_config
from alignflow.conf.schema import PipelineConfig

CONF = Path(__file__).resolve().parents[2] / "conf"
PROFILES = sorted(
    [CONF / "pipeline.yaml", CONF / "endpoints.yaml", CONF / "gpu-8b.yaml", *(CONF / "recipes").glob("*.yaml")]
)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_profile_loads_and_opens_with_its_launch_command(profile):
    load_config(profile)
    head = profile.read_text().splitlines()[:8]
    assert head[0].startswith("#")
    assert any("alignflow run" in line or "make run" in line for line in head)


def test_embedded_default_is_the_schema_default():
    # Recipes only list what differs, so the schema's defaults must be the embedded default's.
    yaml_values = flatten(load_config(CONF / "pipeline.yaml"))
    schema_values = flatten(PipelineConfig())
    differ = {k: (v, schema_values.get(k)) for k, v in yaml_values.items() if v != schema_values.get(k) and k != "name"}
    assert not differ
