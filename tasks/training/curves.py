"""Training curves as PNGs, drawn from the metrics rank 0 logged to MLflow.

`plot_training_curves`: one run's curves (2x2 panels; an SFT stage's loss shares the loss panel).
`plot_comparison_curves`: every recipe of a comparison on shared axes, one line per recipe.
"""

from __future__ import annotations

from pathlib import Path

PANELS = (
    ("train/loss", "loss"),
    ("train/rewards/margins", "reward margin"),
    ("train/rewards/accuracies", "reward accuracy"),
    ("train/learning_rate", "learning rate"),
)
SFT_LOSS = "sft/loss"
COMPARISON_PANELS = (
    ("train/loss", "preference-stage loss"),
    ("train/rewards/margins", "reward margin (train, as each trainer defines it)"),
    ("train/rewards/accuracies", "reward accuracy (train)"),
    (SFT_LOSS, "SFT-stage loss (recipes with one)"),
)


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(tracking_uri: str, run_id: str, out: Path, title: str = "") -> Path | None:
    """Draw the logged training curves (2x2 panels); None when nothing was logged."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    series = {key: _history(client, run_id, key) for key, _ in PANELS}
    sft = _history(client, run_id, SFT_LOSS)
    if not any(series.values()) and not sft:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), constrained_layout=True)
    for ax, (key, label) in zip(axes.flat, PANELS, strict=True):
        points = series[key]
        if points:
            ax.plot([s for s, _ in points], [v for _, v in points], marker=".", linewidth=1, label="preference")
        if key == "train/loss" and sft:
            ax.plot([s for s, _ in sft], [v for _, v in sft], marker=".", linewidth=1, label="sft stage")
            ax.legend(fontsize=8)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_comparison_curves(tracking_uri: str, runs: dict[str, str], out: Path, title: str = "") -> Path | None:
    """Every recipe's curves on shared axes: `runs` maps a recipe name to its MLflow run; None when nothing was logged."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    series = {name: {key: _history(client, run, key) for key, _ in COMPARISON_PANELS} for name, run in runs.items()}
    if not any(points for per_run in series.values() for points in per_run.values()):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True, constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, label) in zip(axes.flat, COMPARISON_PANELS, strict=True):
        for i, (name, per_run) in enumerate(series.items()):
            points = per_run[key]
            if points:
                ax.plot(
                    [s for s, _ in points],
                    [v for _, v in points],
                    marker=".",
                    linewidth=1.2,
                    color=colors[i % len(colors)],
                    label=name,
                )
        ax.set_title(label)
        ax.grid(alpha=0.3)
        values = [v for per_run in series.values() for _, v in per_run[key]]
        if key.endswith("loss") and values and min(values) > 0 and max(values) > 10 * min(values):
            ax.set_yscale("log")  # losses of different objectives differ by orders of magnitude (IPO vs sigmoid)
    for ax in axes[1]:
        ax.set_xlabel("optimizer step (each stage counts from 1)")
    handles = {}
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(name, handle)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize=8)
    if title:
        fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
