"""`training.chat_template` (issue 30, item 8): a template string or file in place of the base model's own, read and
checked when the config loads, never a TRL field; the tokenizers of validation, evaluation and generation apply it,
and every cache of text it shapes is keyed on it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from alignflow.conf.chat_template import INLINE, lineage
from alignflow.conf.loader import ConfigError, config_hash, flatten, load_config
from alignflow.conf.schema import PipelineConfig
from alignflow.flows.profiles import read_profile, resolve_config

# A template no model ships: what it renders is unmistakable.
TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] | upper }}]\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[ASSISTANT]\n{% endif %}"
)
CHAT = [{"role": "user", "content": "Why is the sky blue?"}, {"role": "assistant", "content": "Scattering."}]


def _profile(folder: Path, template: str = "templates/chat.jinja") -> Path:
    """A team's profile that names a template file, the file next to it."""
    (folder / "templates").mkdir(parents=True, exist_ok=True)
    (folder / "templates" / "chat.jinja").write_text(TEMPLATE)
    path = folder / "team.yaml"
    path.write_text(f"training:\n  chat_template: {template}\n")
    return path


def _error(*overrides: str, profile: Path | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(profile, list(overrides), trl_checks=False)
    return str(caught.value)


# ---- the config ---------------------------------------------------------------------------------------------------


def test_unset_is_the_models_own():
    training = load_config(trl_checks=False).training
    assert training.chat_template is None and training.chat_template_text is None
    assert lineage(training.chat_template) == {"chat_template_source": "model"}


def test_inline_text_is_the_template():
    training = load_config(None, [f"training.chat_template={TEMPLATE}"], trl_checks=False).training
    assert training.chat_template_text == TEMPLATE and training.chat_template.source == INLINE
    assert lineage(training.chat_template) == {
        "chat_template_source": "profile:inline",
        "chat_template_sha256": hashlib.sha256(TEMPLATE.encode()).hexdigest(),
    }


def test_a_relative_file_is_read_from_the_profiles_folder(tmp_path, monkeypatch):
    profile = _profile(tmp_path / "team")
    monkeypatch.chdir(tmp_path)  # not the profile's folder
    template = load_config(profile, trl_checks=False).training.chat_template
    assert template.text == TEMPLATE
    assert template.source == f"profile:{tmp_path / 'team' / 'templates' / 'chat.jinja'}"
    # The same profile run as a deployment reads it (a path on the worker, or a file:// URL) finds it there too.
    assert resolve_config(str(profile)).training.chat_template == template
    assert resolve_config(profile.as_uri()).training.chat_template == template
    assert read_profile(str(profile)).folder == profile.parent


def test_a_relative_file_on_the_command_line_is_the_working_directorys(tmp_path, monkeypatch):
    profile = _profile(tmp_path / "team", template="null")
    (tmp_path / "mine.jinja").write_text(TEMPLATE)
    monkeypatch.chdir(tmp_path)
    training = load_config(profile, ["training.chat_template=mine.jinja"], trl_checks=False).training
    assert training.chat_template.source == f"profile:{tmp_path / 'mine.jinja'}"


def test_a_missing_file_names_the_key_and_the_file(tmp_path):
    message = _error(profile=_profile(tmp_path, template="templates/nope.jinja"))
    assert "training.chat_template" in message and f"{tmp_path / 'templates' / 'nope.jinja'}: no such file" in message
    assert "is a directory" in _error(f"training.chat_template={tmp_path}")


def test_bad_jinja_names_the_key_and_the_file(tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m['content'] }}")  # no endfor
    message = _error(f"training.chat_template={bad}")
    assert "training.chat_template" in message and f"{bad}: not a valid Jinja template: line 1" in message
    bad.write_text("{{ messages | no_such_filter }}")  # fails where transformers compiles it, not only at use
    assert "No filter named 'no_such_filter'" in _error(f"training.chat_template={bad}")
    assert "never reads `messages`" in _error("training.chat_template={{ bos_token }}")
    # transformers' own tags parse: {% generation %} (assistant masks) and loop controls
    ok = "{% for m in messages %}{% if m.role == 'x' %}{% continue %}{% endif %}{% generation %}{{ m.content }}"
    assert load_config(None, [f"training.chat_template={ok}{{% endgeneration %}}{{% endfor %}}"], trl_checks=False)


def test_the_cli_exits_2_naming_the_key_before_any_compute(tmp_path):
    import os
    import subprocess
    import sys

    missing = tmp_path / "nope.jinja"
    env = {**os.environ, "ALIGNFLOW_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "alignflow.flows.cli", "run", f"training.chat_template={missing}"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    said = done.stdout + done.stderr
    assert done.returncode == 2, said
    assert "training.chat_template" in said and f"{missing}: no such file" in said
    assert not (tmp_path / "home").exists()


def test_it_is_never_a_trl_field(tmp_path):
    training = load_config(_profile(tmp_path), trl_checks=False).training
    assert "chat_template" not in training.knobs
    for kwargs in (training.trl_kwargs(), training.sft_kwargs(), training.model_kwargs("m")):
        assert "chat_template" not in kwargs and "chat_template_path" not in kwargs
    # TRL's SFT-only template would leave validation counting another template's tokens: one or the other
    message = _error(f"training.chat_template={TEMPLATE}", "training.sft.chat_template_path=x.jinja")
    assert "sft.chat_template_path" in message and "training.chat_template alone" in message


def test_the_resolved_config_holds_the_text_and_its_params_the_hash(tmp_path):
    profile = _profile(tmp_path)
    config = load_config(profile, trl_checks=False)
    (tmp_path / "templates" / "chat.jinja").unlink()  # a Ray worker or a Prefect parameter never reads the file
    again = PipelineConfig.model_validate(config.model_dump(mode="json"))
    assert again == config and config_hash(again) == config_hash(config)
    params = flatten(config)
    assert params["training.chat_template.sha256"] == hashlib.sha256(TEMPLATE.encode()).hexdigest()
    assert "training.chat_template.text" not in params  # MLflow params are short: the text is an artifact
    assert config_hash(config) != config_hash(load_config(trl_checks=False))


def test_comparison_recipes_share_it(tmp_path):
    shared = load_config(
        None, [f"training.chat_template={TEMPLATE}", "comparison.recipes={orpo: {method: orpo}}"], trl_checks=False
    )
    assert shared.comparison.recipes["orpo"].chat_template == shared.training.chat_template
    other = TEMPLATE.replace("[ASSISTANT]", "[BOT]")
    message = _error(f"training.chat_template={TEMPLATE}", f"comparison.recipes.orpo.chat_template={other}")
    assert "comparison.recipes.orpo.chat_template" in message


# ---- the stages' tokenizers and caches ---------------------------------------------------------------------------


def test_validation_counts_tokens_through_the_override(tmp_path):
    from alignflow.conf.training import TinyModelConfig
    from alignflow.tasks.validation.tokens import TokenCounter, load_tokenizer

    tiny = TinyModelConfig(vocab_size=512)
    own = load_tokenizer("builtin:tiny-llama", tiny, tmp_path / "models")
    tokenizer = load_tokenizer("builtin:tiny-llama", tiny, tmp_path / "models", TEMPLATE)
    assert tokenizer.chat_template == TEMPLATE and own.chat_template != TEMPLATE
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert text.startswith("[USER]\nWhy is the sky blue?\n[ASSISTANT]\nScattering.")
    counts, _ = TokenCounter(tokenizer).measure([(CHAT[:1], CHAT[1:], [{"role": "assistant", "content": "No."}])])
    assert counts[0, 0] == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    (own_counts, _) = TokenCounter(own).measure([(CHAT[:1], CHAT[1:], [{"role": "assistant", "content": "No."}])])
    assert own_counts[0, 0] != counts[0, 0]


def test_training_and_evaluation_load_the_override(tiny_model_path, tmp_path):
    from transformers import AutoTokenizer

    from alignflow.tasks.evaluation.metrics import load_causal_lm
    from alignflow.tasks.training.recipe import get_tokenizer

    tokenizer = get_tokenizer(str(tiny_model_path), "dpo", TEMPLATE)
    assert tokenizer.chat_template == TEMPLATE and tokenizer.padding_side == "left"
    assert get_tokenizer(str(tiny_model_path), "dpo").chat_template != TEMPLATE
    # save_final saves this tokenizer with the model: the registered folder, and serving, load it back
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template == TEMPLATE
    _, evaluated = load_causal_lm(tiny_model_path, TEMPLATE)
    assert evaluated.chat_template == TEMPLATE
    assert load_causal_lm(tiny_model_path)[1].chat_template != TEMPLATE


def test_evaluation_answers_are_cached_per_template(tiny_model_path, tmp_path):
    from alignflow.conf.evaluation import EvaluationConfig
    from alignflow.tasks.evaluation.head_to_head import EvalPromptSet, cached_answers

    eval_set = EvalPromptSet(name="t", sha256="s", ids=["a"], prompts=["Why is the sky blue?"], references=["x"])
    config = EvaluationConfig(samples_per_prompt=1, max_new_tokens=2, temperature=0.0)
    cached_answers(tiny_model_path, "model-sha", eval_set, config, tmp_path)
    cached_answers(tiny_model_path, "model-sha", eval_set, config, tmp_path, TEMPLATE)
    assert len(list(tmp_path.glob("*.json"))) == 2  # one set of answers per template: never the other's


def test_generation_applies_it_to_the_trained_family_only():
    from alignflow.conf.generation import LLMConfig
    from alignflow.flows.data import generator_templates
    from alignflow.tasks.generation.llms import build_llm

    config = load_config(
        None,
        [
            f"training.chat_template={TEMPLATE}",
            "training.model_name_or_path=/models/base",
            "generation.generators=[{model: registry:champion}, {model: /models/base}, {model: /models/other}, "
            "{provider: openai, model: served, base_url: 'http://127.0.0.1:9/v1'}]",
        ],
        trl_checks=False,
    )
    templates = generator_templates(config)
    assert templates[:4] == [TEMPLATE, TEMPLATE, None, None]  # an endpoint applies its own, server-side
    assert build_llm(LLMConfig(), "g", "/models/base", 0, 1, chat_template=TEMPLATE).chat_template == TEMPLATE
    assert build_llm(LLMConfig(), "g", "/models/base", 0, 1).chat_template is None


def test_the_run_and_its_model_version_carry_its_lineage():
    from types import SimpleNamespace

    from alignflow.flows.bookkeeping import lineage_tags

    ref = SimpleNamespace(uri="org/model", sha256="0" * 64)  # a hub id: no builtin provenance
    data = SimpleNamespace(
        pairs=ref, base=ref, train=ref, test=ref, start_label="base", validation=SimpleNamespace(valid=8, quarantined=0)
    )
    config = load_config(None, [f"training.chat_template={TEMPLATE}"], trl_checks=False)
    tags = lineage_tags(config, data)  # the MLflow run's tags, and the registered version's
    assert tags["chat_template_source"] == INLINE
    assert tags["chat_template_sha256"] == hashlib.sha256(TEMPLATE.encode()).hexdigest()
    assert lineage_tags(load_config(trl_checks=False), data)["chat_template_source"] == "model"
