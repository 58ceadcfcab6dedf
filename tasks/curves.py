"""Training curves as a PNG, drawn from the metrics rank 0 logged to MLflow."""

from __future__ import annotations

from pathlib import Path

PANELS = (
    ("train/loss", "loss"),
    ("train/rewards/margins", "reward margin"),
    ("train/rewards/accuracies", "reward accuracy"),
    ("train/learning_rate", "learning rate"),
)


def plot_training_curves(tracking_uri: str, run_id: str, out: Path, title: str = "") -> Path | None:
    """Draw the logged training curves (2x2 panels); None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    series = {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key, _ in PANELS}
    if not any(series.values()):
        return None
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), constrained_layout=True)
    for ax, (key, label) in zip(axes.flat, PANELS, strict=True):
        points = series[key]
        if points:
            ax.plot([s for s, _ in points], [v for _, v in points], marker=".", linewidth=1)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
