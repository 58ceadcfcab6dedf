"""The comparison table: one row per recipe, quality next to cost, and the pick of the best.

A row holds the held-out metrics (the same pairs and prompts for every recipe, the base model
as the reference of the implicit reward, the profile's `training.beta` as its scale), the win
rate against the champion (or the base model when there is none), and what training cost:
wall time over all stages, CPU-seconds (GPU-seconds on GPU runs) summed over the workers, peak
memory, and forward passes measured with hooks on the models (tasks/cost.py).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from alignflow.conf.training import TrainingConfig

if TYPE_CHECKING:
    from alignflow.tasks.evaluation.stage import Evaluation
    from alignflow.tasks.training.driver import TrainResult

COLUMNS = (
    "recipe",
    "status",
    "stages",
    "preference_accuracy",
    "reward_margin",
    "win_rate",
    "win_rate_low",
    "win_rate_high",
    "win_rate_vs",
    "chosen_nll",
    "wall_s",
    "compute_s",
    "device",
    "peak_mem_mb",
    "forward_calls_per_step",
    "forward_passes_per_example",
    "forward_passes",
    "steps",
    "detail",
)
QUALITY = ("preference_accuracy", "reward_margin", "chosen_nll")
QUALITY_COLUMNS = COLUMNS[: COLUMNS.index("chosen_nll") + 1]
HEADERS = {
    "preference_accuracy": "pref. accuracy",
    "reward_margin": "reward margin",
    "win_rate_vs": "vs",
    "forward_calls_per_step": "fwd calls/step",
    "forward_passes_per_example": "fwd passes/example",
    "forward_passes": "fwd passes",
}
COST_COLUMNS = (
    "recipe",
    "wall_s",
    "compute_s",
    "device",
    "peak_mem_mb",
    "forward_calls_per_step",
    "forward_passes_per_example",
    "forward_passes",
    "steps",
)
MEANING = {
    "preference_accuracy": "held-out pairs whose implicit reward (vs the base model) prefers chosen",
    "reward_margin": "mean implicit reward margin, beta = the profile's training.beta for every recipe",
    "win_rate": "answers judged better than the opponent's (ties 1/2) on the evaluation prompts, every recipe "
    "against the same opponent (the champion, else the base model)",
    "win_rate_low": "lower bound of the win rate's 95% paired-bootstrap interval: what the gate reads, and the "
    "default ranking (comparison.metric)",
    "chosen_nll": "mean per-token NLL of the held-out chosen responses (lower is better)",
    "wall_s": "training wall time over all stages (noisy when recipes share the machine)",
    "compute_s": "CPU-seconds of the training loops (process time, all workers; start-up excluded), or "
    "GPU-seconds (workers x training-loop wall) on GPU runs",
    "peak_mem_mb": "largest peak resident memory of a worker (peak GPU memory on GPU runs)",
    "forward_calls_per_step": "model forward calls per optimizer step and worker, over all stages",
    "forward_passes_per_example": "sequences through a model per training example, summed over the stages",
    "forward_passes": "sequences through a model in all (all workers, all stages)",
}


def stages_label(training: TrainingConfig) -> str:
    """`sft -> dpo`, `orpo`: the stages a recipe runs."""
    return f"sft -> {training.method}" if training.sft.enabled else training.method


def slug(name: str) -> str:
    """A recipe name as a path and MLflow-key component: `orpo[beta=0.1]` -> `orpo-beta-0.1`."""
    return re.sub(r"[^A-Za-z0-9_.+]+", "-", name).strip("-")


def short_reason(error: BaseException | str) -> str:
    """The line of an error that says what went wrong: a Ray Train failure carries the worker's whole
    traceback; its last `SomeError: message` line is the cause."""
    text = str(error).strip()
    causes = re.findall(r"^\s*((?:\w+\.)*\w*(?:Error|Exception|Exit)\b:?.*)$", text, flags=re.MULTILINE)
    line = causes[-1].strip() if causes else (text.splitlines()[0] if text else type(error).__name__)
    if isinstance(error, BaseException) and not causes and not line.startswith(type(error).__name__):
        line = f"{type(error).__name__}: {line}"
    return line[:300]


def recipe_cost(trained: TrainResult, use_gpu: bool) -> dict:
    """The cost columns from `train_stages`' result (each stage's measured cost)."""
    stages = list(trained.stages.values())
    costs = [s.cost for s in stages]
    worker_steps = sum(c.get("steps", 0) * c.get("workers", 1) for c in costs)
    detail = "; ".join(
        f"{s.stage}: {c.get('steps', 0)} steps, {c.get('forward_calls_per_step', 0)} calls/step, "
        f"{c.get('forward_passes_per_example', 0)} passes/example" + (" (reused)" if s.reused else "")
        for s, c in zip(stages, costs, strict=True)
    )
    return {
        "wall_s": trained.wall_s,
        "compute_s": round(sum(c.get("gpu_s" if use_gpu else "cpu_s", 0.0) for c in costs), 1),
        "device": "gpu" if use_gpu else "cpu",
        "peak_mem_mb": max((c.get("gpu_peak_mb" if use_gpu else "peak_rss_mb", 0.0) for c in costs), default=0.0),
        "forward_calls_per_step": round(sum(c.get("forward_calls", 0) for c in costs) / worker_steps, 3)
        if worker_steps
        else 0.0,
        "forward_passes_per_example": round(sum(c.get("forward_passes_per_example", 0.0) for c in costs), 3),
        "forward_passes": sum(c.get("forward_passes", 0) for c in costs),
        "steps": sum(c.get("steps", 0) for c in costs),
        "detail": detail,
    }


def completed_row(name: str, training: TrainingConfig, trained: TrainResult, evaluation: Evaluation) -> dict:
    h2h = evaluation.head_to_head
    row = {
        "recipe": name,
        "status": "completed",
        "stages": stages_label(training),
        **{k: evaluation.held_out.candidate[k] for k in QUALITY},
        "win_rate": round(h2h.win_rate.estimate, 4),
        "win_rate_low": round(h2h.win_rate.low, 4),
        "win_rate_high": round(h2h.win_rate.high, 4),
        "win_rate_vs": h2h.against,
        **recipe_cost(trained, training.scaling.use_gpu),
    }
    return {k: row[k] for k in COLUMNS}


def failed_row(name: str, training: TrainingConfig, reason: str) -> dict:
    return {
        **dict.fromkeys(COLUMNS),
        "recipe": name,
        "status": "failed",
        "stages": stages_label(training),
        "detail": reason,
    }


def best_row(rows: list[dict], metric: str) -> dict | None:
    """The completed recipe with the highest `metric` (the first declared on a tie); None when none completed."""
    done = [r for r in rows if r["status"] == "completed"]
    return max(done, key=lambda r: r[metric]) if done else None


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/")


def table_markdown(rows: list[dict], best: str | None = None) -> str:
    """The table as markdown (the best recipe in bold), then what each column means."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    for row in rows:
        cells = [_cell(row[c]) for c in COLUMNS]
        if row["recipe"] == best:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"- `{k}`: {v}" for k, v in MEANING.items())]
    return "\n".join(lines)


def cost_ratio(rows: list[dict], numerator: str, denominator: str) -> dict[str, float | None]:
    """numerator / denominator recipe on wall time, compute and forward passes per example (None if either failed)."""
    by_name = {r["recipe"]: r for r in rows if r["status"] == "completed"}
    a, b = by_name.get(numerator), by_name.get(denominator)
    keys = ("wall_s", "compute_s", "forward_passes_per_example", "forward_passes")
    return {k: round(a[k] / b[k], 3) if a and b and b[k] else None for k in keys}
