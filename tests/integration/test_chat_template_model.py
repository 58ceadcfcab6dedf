"""A base model without a chat template, given one by `training.chat_template` (issue 30, item 8): validation
counts its tokens, the trainer formats the pairs with it, the saved (registered, served) model carries it,
evaluation and generation apply it. Without the override each of these fails on the bare model."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import small_config

from alignflow.tasks.runtime.state import Ref, sha256_file, sha256_tree

TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] | upper }}]\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[ASSISTANT]\n{% endif %}"
)
CHAT = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def bare_model(tiny_model_path, tmp_path_factory):
    """The tiny model with its chat template taken out: a base model that ships none."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("bare") / "model"
    shutil.copytree(tiny_model_path, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    assert AutoTokenizer.from_pretrained(folder).chat_template is None
    return folder


@pytest.fixture(scope="module")
def split(pairs_frame, tmp_path_factory):
    folder = tmp_path_factory.mktemp("split")
    pairs_frame.head(8).to_parquet(folder / "train.parquet", index=False)
    pairs_frame.tail(4).to_parquet(folder / "test.parquet", index=False)
    return folder


def test_validation_counts_tokens_with_the_override(bare_model, split, tmp_path):
    from alignflow.flows.stages import validate

    pairs = Ref(uri=(split / "train.parquet").as_uri(), sha256=sha256_file(split / "train.parquet"))
    base = Ref(uri=bare_model.as_uri(), sha256=sha256_tree(bare_model))
    config = small_config("validation.min_pairs=1").validation
    report, _ = validate.fn(pairs, config, base, tmp_path / "validation", chat_template=TEMPLATE)
    assert report.valid > 0 and report.gate.passed


def test_the_trained_model_carries_it_to_the_registry_and_serving(bare_model, split, tmp_path):
    from mlflow.pyfunc import PythonModelContext
    from transformers import AutoTokenizer

    from alignflow.tasks.evaluation.metrics import evaluate_models
    from alignflow.tasks.registry.serving import HF_ARTIFACT, ServingModel
    from alignflow.tasks.training import recipe

    training = small_config(
        f"training.model_name_or_path={bare_model}",
        f"training.chat_template={TEMPLATE}",
        "training.max_steps=1",
        "training.per_device_train_batch_size=2",
    ).training
    trainer, tokenizer = recipe.build_trainer(training, str(bare_model), str(split / "train.parquet"), str(tmp_path))
    assert trainer.processing_class.chat_template == TEMPLATE
    row = trainer.train_dataset[0]
    assert tokenizer.decode(row["prompt_ids"]).lstrip().startswith("[USER]")  # the pairs, as TRL formatted them
    trainer.args.disable_tqdm = True
    assert trainer.train().global_step == 1
    final = tmp_path / "final"
    recipe.save_final(trainer, tokenizer, final)  # the folder the registry logs, serves and exports as champion
    assert AutoTokenizer.from_pretrained(final).chat_template == TEMPLATE

    served = ServingModel()
    served.load_context(PythonModelContext(artifacts={HF_ARTIFACT: str(final)}, model_config={}))
    assert served.tokenizer.chat_template == TEMPLATE
    assert isinstance(served.predict(None, {"messages": CHAT, "max_new_tokens": 2}), str)

    # The base model has no template of its own: evaluation scores it through the override.
    metrics = evaluate_models(final, bare_model, split / "test.parquet", beta=0.1, batch_size=4, chat_template=TEMPLATE)
    assert metrics.pairs == 4 and metrics.base["preference_accuracy"] == 0.0


def test_head_to_head_and_generation_apply_it_to_the_base_model(bare_model):
    from alignflow.conf.generation import LLMConfig
    from alignflow.tasks.evaluation.head_to_head import sample_answers
    from alignflow.tasks.generation.llms import build_llm

    answers = sample_answers(bare_model, ["Why is the sky blue?"], 1, 2, 0.0, 0, chat_template=TEMPLATE)
    assert len(answers) == 1 and len(answers[0]) == 1

    llm = build_llm(
        LLMConfig(model=str(bare_model)), "generation.generators[0].llm", str(bare_model), 0, 1, chat_template=TEMPLATE
    )
    llm.load()
    try:
        assert llm.prepare_input(CHAT) == "[USER]\nWhy is the sky blue?\n[ASSISTANT]\n"
    finally:
        llm.unload()
