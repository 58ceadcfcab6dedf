"""The check registry (conf/checks.py) is the one list of check ids: the config and the
shipped profile agree with it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import yaml

from alignflow.conf.checks import (
    CHECK_IDS,
    CHECKS,
    DATASET_CHECKS,
    DEFAULT_ERRORS,
    DEFAULT_WARNINGS,
    STRUCTURAL_CHECKS,
)
from alignflow.conf.validation import ValidationCheck, ValidationConfig

PIPELINE_YAML = Path(__file__).resolve().parents[2] / "conf" / "pipeline.yaml"


def _yaml_list_items(text: str, section: str, key: str) -> dict[str, str]:
    """`- id   # comment` lines of `section.key` in a YAML file, as id -> comment ('' when none)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{section}:"))
    items: dict[str, str] = {}
    inside = False
    for line in lines[start + 1 :]:
        if line and not line[0].isspace() and not line.startswith("#"):
            break  # the next top-level section
        if re.match(rf"^  {key}:", line):
            inside = True
            continue
        if inside:
            item = re.match(r"^\s+- (\w+)\s*(?:#\s*(.*))?$", line)
            if not item:
                break
            items[item.group(1)] = (item.group(2) or "").strip()
    return items


def test_registry_is_consistent():
    assert len(CHECK_IDS) == len(set(CHECK_IDS)) == len(CHECKS)
    assert set(DEFAULT_ERRORS) | set(DEFAULT_WARNINGS) == set(CHECK_IDS)
    assert not set(DEFAULT_ERRORS) & set(DEFAULT_WARNINGS)
    assert set(STRUCTURAL_CHECKS) <= set(DEFAULT_ERRORS)  # a structural check can only be an error
    assert set(DATASET_CHECKS) == {c.id for c in CHECKS.values() if c.kind == "dataset"}
    assert all(c.description and c.kind in ("row", "dataset") for c in CHECKS.values())


def test_config_derives_from_the_registry():
    assert get_args(ValidationCheck) == CHECK_IDS
    config = ValidationConfig()
    assert tuple(config.errors) == DEFAULT_ERRORS and tuple(config.warnings) == DEFAULT_WARNINGS


def test_pipeline_yaml_lists_exactly_the_registry_ids():
    text = PIPELINE_YAML.read_text()
    validation = yaml.safe_load(text)["validation"]
    listed = [*validation["errors"], *validation["warnings"]]
    assert sorted(listed) == sorted(CHECK_IDS)  # each id once, none missing, none unknown
    ValidationConfig(**validation)  # and the profile's levels are accepted (structural checks stay errors)


def test_pipeline_yaml_comments_every_check():
    text = PIPELINE_YAML.read_text()
    errors = _yaml_list_items(text, "validation", "errors")
    warnings = _yaml_list_items(text, "validation", "warnings")
    validation = yaml.safe_load(text)["validation"]
    assert list(errors) == validation["errors"] and list(warnings) == validation["warnings"]
    comments = {**errors, **warnings}
    assert all(comments[c] for c in CHECK_IDS), {c: comments[c] for c in CHECK_IDS if not comments[c]}
    always = {c for c, comment in comments.items() if "always an error" in comment}
    assert always == set(STRUCTURAL_CHECKS)
