"""Head-to-head evaluation: the candidate against an opponent (the champion, else the base model).

On a fixed, versioned prompt set disjoint from the training prompts (conf/prompts/eval.jsonl
by default; its content hash is part of the result), each side samples `samples` answers per
prompt. Answer j of both sides is drawn with the same seed, so the two models face the same
random stream and the pairs are matched by prompt and seed. Every pair is judged in both orders
(tasks/evaluation/judges.py); ties count half. The win rate's 95% interval comes from a paired
bootstrap over prompts and the length-controlled estimate from tasks/evaluation/stats.py.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from alignflow.conf.evaluation import EvaluationConfig
from alignflow.tasks.evaluation.judges import PairJudge, PairToJudge, judge_both_orders
from alignflow.tasks.evaluation.metrics import load_causal_lm
from alignflow.tasks.evaluation.stats import Interval, bootstrap_win_rate, length_controlled_win_rate
from alignflow.tasks.generation.judge import words
from alignflow.tasks.generation.prompts import load_prompts, prompts_path, source_sha256
from alignflow.tasks.runtime.chat_template import key_parts
from alignflow.tasks.runtime.overlap import normalise, prompt_set
from alignflow.tasks.runtime.state import sha256_text

SAMPLE_BATCH = 32  # prompts per generate() call: its batch number seeds its draws, wherever it runs
ANSWERS_VERSION = 1  # bump when sample_answers changes what it draws: cached answers are then sampled again


class EvalSetOverlap(ValueError):
    """The evaluation prompt set shares prompts with the training data: a win rate on it would flatter."""


@dataclass(frozen=True)
class EvalPromptSet:
    name: str
    sha256: str
    ids: list[str]
    prompts: list[str]
    references: list[str]


@dataclass(frozen=True)
class HeadToHead:
    """The candidate's record against one opponent on one prompt set."""

    against: str
    prompt_set: str
    prompt_set_sha256: str
    judge: str
    prompts: int
    samples_per_prompt: int
    pairs: int
    wins: int
    ties: int
    losses: int
    win_rate: Interval
    length_controlled: Interval
    candidate_words: float
    opponent_words: float
    rows: list[dict] = field(repr=False, default_factory=list)

    def summary(self) -> str:
        return (
            f"win rate against the {self.against}: {self.win_rate.estimate:.3f} "
            f"(95% CI {self.win_rate.low:.3f}-{self.win_rate.high:.3f}, n={self.prompts} prompts x "
            f"{self.samples_per_prompt} samples; {self.wins} wins, {self.ties} ties, {self.losses} losses; "
            f"length-controlled {self.length_controlled.estimate:.3f}; "
            f"mean words {self.candidate_words:.1f} vs {self.opponent_words:.1f})"
        )

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow (eval/win_rate*, eval/judge/*)."""
        return {
            "win_rate": self.win_rate.estimate,
            "win_rate_low": self.win_rate.low,
            "win_rate_high": self.win_rate.high,
            "win_rate_lc": self.length_controlled.estimate,
            "win_rate_lc_low": self.length_controlled.low,
            "win_rate_lc_high": self.length_controlled.high,
            "win_rate_n_prompts": float(self.prompts),
            "win_rate_n_pairs": float(self.pairs),
            "judge/candidate_words": self.candidate_words,
            f"judge/{self.against}_words": self.opponent_words,
        }

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("rows")
        return data


def load_eval_set(config: EvaluationConfig) -> EvalPromptSet:
    rows = load_prompts(config.prompts, config.max_prompts)
    path = prompts_path(config.prompts)
    return EvalPromptSet(
        name=config.prompts,
        sha256=source_sha256(path),
        ids=[r["id"] for r in rows],
        prompts=[r["prompt"] for r in rows],
        references=[r["reference"] for r in rows],
    )


def check_disjoint(eval_set: EvalPromptSet, training_prompts: list, where: str) -> None:
    """Raise when an evaluation prompt is a training prompt, by the rule validation's eval_overlap applies
    (tasks/runtime/overlap.py: a conversation's last user turn, normalised)."""
    seen = prompt_set(training_prompts)
    mine = normalise(eval_set.prompts)
    shared = [i for i, p in zip(eval_set.ids, mine, strict=True) if p in seen]
    if shared:
        raise EvalSetOverlap(
            f"{len(shared)} prompts of the evaluation set {eval_set.name} are also in {where} "
            f"(first: {shared[:5]}): use an evaluation set disjoint from the training prompts (evaluation.prompts)"
        )


def sample_answers(
    model_dir: str | Path,
    prompts: list[str],
    samples: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int = SAMPLE_BATCH,
    chat_template: str | None = None,
    batches: Collection[int] | None = None,
    use_gpu: bool = False,
) -> list[list[str]]:
    """answers[i][j]: answer j to prompt i. Batch b of sample j is drawn with seed (seed, j, b), so two
    models given the same prompts and settings draw from the same random numbers, answer by answer.
    `chat_template` replaces the model's own (None: its own). `batches`: only these batches of prompts (the
    others' answers stay empty): a worker's share, drawn as the whole run would draw it."""
    import torch

    model, tokenizer = load_causal_lm(model_dir, chat_template, use_gpu)
    tokenizer.padding_side = "left"
    heads = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": 1.0} if temperature > 0 else {"do_sample": False}
    )
    answers: list[list[str]] = [[] for _ in prompts]
    for j in range(samples):
        for b, start in enumerate(range(0, len(heads), batch_size)):
            if batches is not None and b not in batches:
                continue
            batch = tokenizer(
                heads[start : start + batch_size], add_special_tokens=False, padding=True, return_tensors="pt"
            ).to(model.device)
            torch.manual_seed(seed * 1_000_003 + j * 10_007 + b)
            with torch.no_grad():
                out = model.generate(
                    **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
                )
            texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            for offset, text in enumerate(texts):
                answers[start + offset].append(text.strip())
    return answers


# Draws the answers of a model (path, prompts, chat template or None): in this process, or on Ray workers.
Sampler = Callable[[str | Path, list[str], str | None], list[list[str]]]


def sample_here(config: EvaluationConfig) -> Sampler:
    """`sample_answers` in this process, with the evaluation's sampling settings."""
    settings = (config.samples_per_prompt, config.max_new_tokens, config.temperature, config.seed)
    return lambda model, prompts, template: sample_answers(model, prompts, *settings, chat_template=template)


def cached_answers(
    model_dir: str | Path,
    model_sha256: str | None,
    eval_set: EvalPromptSet,
    config: EvaluationConfig,
    cache: Path | None,
    chat_template: str | None = None,
    sampler: Sampler | None = None,
) -> list[list[str]]:
    """`sample_answers` for the evaluation set, kept under `cache` by the model's content hash, the prompt set and
    the sampling settings (and the chat template that replaces the model's own): the base model's answers are
    sampled once per state directory, and a champion's were sampled when it was the candidate. The answers are
    deterministic in all of them, so a hit is the same answers. `sampler` draws them (default: `sample_here`)."""
    settings = (config.samples_per_prompt, config.max_new_tokens, config.temperature, config.seed)
    draw = sampler or sample_here(config)
    if cache is None or not model_sha256:
        return draw(model_dir, eval_set.prompts, chat_template)
    key = sha256_text(
        model_sha256,
        eval_set.sha256,
        json.dumps([*settings, eval_set.ids, ANSWERS_VERSION]),
        *key_parts(chat_template),
    )
    path = Path(cache) / f"{key[:24]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    answers = draw(model_dir, eval_set.prompts, chat_template)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A comparison evaluates recipes in threads: each writer has its own scratch file, and the rename is atomic.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".partial", delete=False) as scratch:
        scratch.write(json.dumps(answers))
    Path(scratch.name).replace(path)
    return answers


def head_to_head(
    candidate: str | Path,
    opponent: str | Path,
    against: str,
    eval_set: EvalPromptSet,
    config: EvaluationConfig,
    judge: PairJudge,
    judge_name: str,
) -> HeadToHead:
    """Sample both sides (nothing cached), judge every pair in both orders, and summarise with intervals."""
    mine = cached_answers(candidate, None, eval_set, config, None)
    theirs = cached_answers(opponent, None, eval_set, config, None)
    return judge_match(mine, theirs, against, eval_set, config, judge, judge_name)


def judge_match(
    mine: list[list[str]],
    theirs: list[list[str]],
    against: str,
    eval_set: EvalPromptSet,
    config: EvaluationConfig,
    judge: PairJudge,
    judge_name: str,
) -> HeadToHead:
    """Judge the candidate's answers against the opponent's, pair by pair in both orders, with intervals."""
    pairs, prompt_index, rows = [], [], []
    for i, (prompt, reference) in enumerate(zip(eval_set.prompts, eval_set.references, strict=True)):
        for a, b in zip(mine[i], theirs[i], strict=True):
            pairs.append(PairToJudge(prompt, reference, a, b))
            prompt_index.append(i)
    outcomes = np.asarray(judge_both_orders(judge, pairs))
    index = np.asarray(prompt_index)
    cand_len = np.asarray([len(words(p.first)) for p in pairs], dtype=float)
    opp_len = np.asarray([len(words(p.second)) for p in pairs], dtype=float)
    for n, (pair, outcome) in enumerate(zip(pairs, outcomes, strict=True)):
        rows.append(
            {
                "prompt_id": eval_set.ids[prompt_index[n]],
                "sample": n % config.samples_per_prompt,
                "prompt": pair.prompt,
                "candidate": pair.first,
                against: pair.second,
                "outcome": float(outcome),
                "candidate_words": int(cand_len[n]),
                f"{against}_words": int(opp_len[n]),
            }
        )
    resamples = config.bootstrap_resamples
    return HeadToHead(
        against=against,
        prompt_set=eval_set.name,
        prompt_set_sha256=eval_set.sha256,
        judge=judge_name,
        prompts=len(eval_set.prompts),
        samples_per_prompt=config.samples_per_prompt,
        pairs=len(pairs),
        wins=int((outcomes > 0.5).sum()),
        ties=int((outcomes == 0.5).sum()),
        losses=int((outcomes < 0.5).sum()),
        win_rate=bootstrap_win_rate(outcomes, index, resamples, config.seed),
        length_controlled=length_controlled_win_rate(
            outcomes, index, cand_len, opp_len, max(200, resamples // 4), config.seed
        ),
        candidate_words=round(float(cand_len.mean()), 2),
        opponent_words=round(float(opp_len.mean()), 2),
        rows=rows,
    )
