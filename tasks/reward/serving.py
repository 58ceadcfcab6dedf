"""The registered reward model: a pyfunc around the HF folder that answers one reward per conversation.

Logged like the policy's serving model (tasks/registry/serving.py), as MLflow "models from code" with the plain HF
folder as its `hf_model` artifact, so `serving.download_model_dir("models:/NAME@champion", dest)` gives back a
folder `AutoModelForSequenceClassification.from_pretrained` loads (one label, its tokenizer and chat template,
config.pad_token_id set). It does not reuse `log_serving_model`: that one generates text with a causal LM.

    {"inputs": [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}]}
        -> {"predictions": [1.73]}: the raw reward of each conversation's last (assistant) turn

Rewards are raw logits; `alignflow.tasks.reward.scorer.to_unit` maps one onto the judges' [0, 1] scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc

from alignflow.tasks.registry.serving import HF_ARTIFACT, requirements

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo


def _rows(model_input: Any) -> list[dict]:
    """The request rows: a list of {"messages": [...]}, one such dict, or a DataFrame of them (the server's)."""
    if hasattr(model_input, "to_dict"):
        return model_input.to_dict("records")
    return [model_input] if isinstance(model_input, dict) else list(model_input)


def prompt_and_answer(row: dict) -> tuple[list[dict[str, str]], str]:
    """The turns before the answer and the answer: a row's last message must be the assistant's."""
    from mlflow.exceptions import MlflowException

    messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in row.get("messages") or []]
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise MlflowException.invalid_parameter_value(
            "each row is {'messages': [...]} with at least one turn before the last, the assistant's answer"
        )
    return messages[:-1], messages[-1]["content"]


class RewardServingModel(mlflow.pyfunc.PythonModel):
    """One reward per conversation, from the one-label classifier logged as the `hf_model` artifact."""

    _skip_type_hint_validation = True  # rows are checked by prompt_and_answer, with a clearer message

    def load_context(self, context) -> None:
        import torch

        from alignflow.tasks.reward.scorer import load_reward_model

        self.scorer = load_reward_model(context.artifacts[HF_ARTIFACT], use_gpu=torch.cuda.is_available())

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[float]:
        """The reward of each row's last turn given the turns before it, in order."""
        return self.scorer.scores([prompt_and_answer(row) for row in _rows(model_input)])

    predict._is_pyfunc = True


def log_reward_model(model_dir: Path, model_id: str | None = None, name: str = "model") -> ModelInfo:
    """Log `model_dir` (a one-label classifier's HF folder) as the reward pyfunc, into the logged model
    `model_id` when given, else into a new one of the active MLflow run."""
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).resolve()),
        artifacts={HF_ARTIFACT: str(model_dir)},
        model_id=model_id,
        pip_requirements=requirements(),
    )


# MLflow runs this file under a module name of its own to build the logged model (models from code); imported as
# part of alignflow, it registers nothing.
if not __name__.startswith("alignflow."):
    mlflow.models.set_model(RewardServingModel())
