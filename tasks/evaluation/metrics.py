"""Stage 4, evaluate: held-out preference metrics for the candidate, the base model and the champion.

For a model pi and the base model pi_ref, the implicit DPO reward of a response y is
beta * (log pi(y|x) - log pi_ref(y|x)). On each held-out pair:

    preference_accuracy  share of pairs whose chosen reward exceeds the rejected one
    reward_margin        mean (reward(chosen) - reward(rejected))
    logp_accuracy        share of pairs where the model gives chosen a higher mean
                         per-token log-prob than rejected (meaningful for the base model too)
    chosen_nll           mean per-token negative log-likelihood of the chosen responses

The base model is its own reference, so its preference_accuracy is 0 and its margin 0:
that is the bar a trained model must clear.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from alignflow.tasks.runtime.turns import row_turns

# from_pretrained swaps module-level functions while it loads (torch's init functions, tie_weights, the
# default dtype) and puts them back after: two loads in threads of one process, as when a comparison
# evaluates recipes side by side, can restore each other's stand-ins and leave tied weights on the meta device.
_LOAD_LOCK = threading.Lock()


def load_causal_lm(path: str | Path, chat_template: str | None = None, use_gpu: bool = False):
    """The model and its tokenizer, `chat_template` (training.chat_template's text) in place of its own: float32 on
    CPU, bf16 on the GPU when `use_gpu` and there is one."""
    import torch
    from transformers import AutoModelForCausalLM

    from alignflow.tasks.runtime.chat_template import load_tokenizer

    gpu = use_gpu and torch.cuda.is_available()
    with _LOAD_LOCK:
        tokenizer = load_tokenizer(path, chat_template)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16 if gpu else torch.float32)
    model.to("cuda" if gpu else "cpu").eval()
    return model, tokenizer


def response_logps(model, tokenizer, prompts: list[str | list[dict]], responses: list[str], batch_size: int = 16):
    """(sum of log-probs of each response's tokens given its prompt, number of response tokens). A prompt is a text
    (one user turn) or a conversation's turns (system prompt, earlier turns, the last user turn), as training saw it."""
    import torch

    sums, counts = [], []
    eos = tokenizer.eos_token or ""
    for start in range(0, len(prompts), batch_size):
        sequences, n_prompt = [], []
        for prompt, response in zip(
            prompts[start : start + batch_size], responses[start : start + batch_size], strict=True
        ):
            turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            head = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            p_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
            r_ids = tokenizer(response + eos, add_special_tokens=False)["input_ids"]
            sequences.append(p_ids + r_ids)
            n_prompt.append(len(p_ids))
        width = max(map(len, sequences))
        ids = torch.full((len(sequences), width), tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        labels = torch.zeros_like(ids, dtype=torch.bool)
        for row, (seq, n) in enumerate(zip(sequences, n_prompt, strict=True)):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            labels[row, n : len(seq)] = True
        ids, mask, labels = ids.to(model.device), mask.to(model.device), labels.to(model.device)  # a GPU's model too
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        token_logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        scored = labels[:, 1:]
        sums.extend((token_logps * scored).sum(-1).tolist())
        counts.extend(scored.sum(-1).tolist())
    return sums, counts


def score_model(model, tokenizer, pairs: pd.DataFrame, batch_size: int) -> pd.DataFrame:
    prompts = [row_turns(row, "prompt") or row["prompt"] for row in pairs.to_dict("records")]
    chosen, n_c = response_logps(model, tokenizer, prompts, pairs["chosen"].tolist(), batch_size)
    rejected, n_r = response_logps(model, tokenizer, prompts, pairs["rejected"].tolist(), batch_size)
    return pd.DataFrame({"chosen": chosen, "rejected": rejected, "n_chosen": n_c, "n_rejected": n_r})


def preference_metrics(policy: pd.DataFrame, reference: pd.DataFrame, beta: float) -> dict[str, float]:
    margin = beta * ((policy["chosen"] - reference["chosen"]) - (policy["rejected"] - reference["rejected"]))
    per_token_c = policy["chosen"] / policy["n_chosen"].clip(lower=1)
    per_token_r = policy["rejected"] / policy["n_rejected"].clip(lower=1)
    return {
        "preference_accuracy": round(float((margin > 0).mean()), 4),
        "reward_margin": round(float(margin.mean()), 4),
        "logp_accuracy": round(float((per_token_c > per_token_r).mean()), 4),
        "chosen_nll": round(float(-per_token_c.mean()), 4),
    }


@dataclass(frozen=True)
class HeldOutMetrics:
    """Each model's metrics on the same held-out pairs (`champion` when there is one)."""

    pairs: int
    candidate: dict[str, float]
    base: dict[str, float]
    champion: dict[str, float] | None = None

    def of(self, who: str) -> dict[str, float] | None:
        return {"candidate": self.candidate, "base": self.base, "champion": self.champion}[who]

    def table(self) -> list[tuple[str, dict[str, float]]]:
        return [(who, m) for who in ("candidate", "champion", "base") if (m := self.of(who)) is not None]


# Scores a model (path, chat template or None) on pairs: in this process (`score_here`), or on Ray workers.
Scorer = Callable[[str | Path, str | None, pd.DataFrame], pd.DataFrame]


def score_here(batch_size: int) -> Scorer:
    """Score in this process: the model is loaded here."""
    return lambda model, template, pairs: score_model(*load_causal_lm(model, template), pairs, batch_size)


def evaluate_models(
    candidate: str | Path,
    base: str | Path,
    test_path: str | Path,
    beta: float,
    batch_size: int = 16,
    max_pairs: int | None = None,
    champion: str | Path | None = None,
    chat_template: str | None = None,
    scorer: Scorer | None = None,
) -> HeldOutMetrics:
    """The candidate's, the base model's and the champion's metrics on the same held-out pairs. `chat_template`
    replaces the base model's own (the trained models' folders hold the template they were trained with).
    `scorer` computes each model's log-probs (default: in this process, `batch_size` pairs at a time)."""
    pairs = pd.read_parquet(test_path)
    if max_pairs:
        pairs = pairs.head(max_pairs)
    if pairs.empty:
        raise ValueError(f"{test_path}: no held-out pairs to evaluate (raise validation.test_size)")
    score = scorer or score_here(batch_size)
    base_scores = score(base, chat_template, pairs)

    def metrics_of(model: str | Path) -> dict[str, float]:
        return preference_metrics(score(model, None, pairs), base_scores, beta)

    return HeldOutMetrics(
        pairs=len(pairs),
        candidate=metrics_of(candidate),
        base=preference_metrics(base_scores, base_scores, beta),
        champion=metrics_of(champion) if champion is not None else None,
    )
