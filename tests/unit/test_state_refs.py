"""Refs name a stage's output by URI: the local path comes back exactly, whatever characters it holds."""

from __future__ import annotations

from pathlib import Path

from alignflow.tasks.runtime.state import Ref


def test_a_file_uri_gives_back_the_path_it_was_made_from(tmp_path):
    # A grid recipe over loss_type lists names its run `loss_type-sigmoid+sft`; as_uri writes `+` as %2B.
    folder = tmp_path / "lora-loss_type-sigmoid+sft 1" / "model"
    ref = Ref(uri=folder.as_uri(), sha256="0" * 64)
    assert "%2B" in ref.uri and ref.path == folder and ref.loadable == str(folder)


def test_a_hub_id_or_remote_uri_is_loaded_as_it_is():
    assert Ref(uri="HuggingFaceTB/SmolLM2-135M-Instruct", sha256="x").loadable == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert Ref(uri="s3://bucket/model", sha256="x").loadable == "s3://bucket/model"
    assert Ref(uri="/plain/path", sha256="x").path == Path("/plain/path")
