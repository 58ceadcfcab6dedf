"""A reward model's score of an answer to a prompt: one forward pass of a sequence-classification head.

The conversation is tokenized the way TRL's RewardTrainer tokenized it in training (the prompt's turns and the
answer as one assistant turn, through the reward model's own chat template, `apply_chat_template(tokenize=True)`),
padded on the right with the tokenizer's pad token, which the model's config names too (the head reads the last
token that is not padding). Rows are sorted by length before batching, so a batch pads little, and the scores are
handed back in the rows' order.

Scores are raw rewards (unbounded logits): the generate stage ranks candidates by them and the head-to-head compares
them. `to_unit` maps one onto [0, 1] with a sigmoid, for the 1-5 ratings people read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Prompt = str | list[dict[str, str]]  # the text of one user turn, or the turns themselves (system, earlier turns)


def conversation(prompt: Prompt, answer: str) -> list[dict[str, str]]:
    """The turns a reward model reads: the prompt's turns, then the answer as the assistant's turn."""
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return [*turns, {"role": "assistant", "content": answer}]


def to_unit(reward: float) -> float:
    """A reward on [0, 1] (sigmoid), rounded as the offline scorer rounds."""
    return round(1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, reward)))), 6)


@dataclass
class RewardModel:
    """A loaded reward model: `scores` answers in batches."""

    model: Any
    tokenizer: Any
    device: str
    batch_size: int = 8
    max_length: int = 1024

    def token_ids(self, prompt: Prompt, answer: str) -> list[int]:
        ids = self.tokenizer.apply_chat_template(conversation(prompt, answer), tokenize=True, return_dict=True)
        return list(ids["input_ids"])[-self.max_length :]  # the end holds the answer the head reads

    def scores(self, items: list[tuple[Prompt, str]]) -> list[float]:
        """The reward of each (prompt, answer), in order."""
        import torch

        encoded = [self.token_ids(prompt, answer) for prompt, answer in items]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        rewards: list[float] = [0.0] * len(encoded)
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                width = max(len(encoded[i]) for i in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                    mask[row, : len(encoded[i])] = 1
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                for row, i in enumerate(batch):
                    rewards[i] = float(logits[row, 0])
        return rewards


def load_reward_model(
    model_dir: str | Path, use_gpu: bool = False, batch_size: int = 8, max_length: int = 1024
) -> RewardModel:
    """The reward model folder (AutoModelForSequenceClassification, one label) on the GPU in bf16 when asked and
    there is one, else on CPU in float32. ValueError when the folder is not a one-label classifier."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:  # as RewardTrainer does: the eos token pads
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ValueError(f"{model_dir}: the reward model's tokenizer has no chat template to format a conversation")
    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=dtype)
    if model.config.num_labels != 1:
        raise ValueError(
            f"{model_dir}: a reward model has one output (num_labels=1), this one has {model.config.num_labels}; "
            "train one with `alignflow reward-model`"
        )
    model.config.pad_token_id = tokenizer.pad_token_id  # the head finds each row's last token by it
    model.to(device).eval()
    return RewardModel(model, tokenizer, device, batch_size, max_length)
