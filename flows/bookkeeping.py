"""MLflow bookkeeping of a flow run, in one place the alignment and comparison flows share.

`open_book` starts the flow's MLflow run with its lineage tags and the resolved config, and
logs what the data stages produced (dataset inputs, generation and validation reports and
metrics). Stages then log into it by id through the `RunBook` they are handed. The run is
marked FAILED when the flow body raises (`with book:`), before the failure hook notifies; a run
whose process was killed is ended KILLED by the next run to open a book (`end_orphans`).
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger
from prefect.runtime import flow_run

from alignflow.conf import chat_template
from alignflow.conf.loader import config_hash, flatten
from alignflow.conf.schema import PipelineConfig
from alignflow.flows.data import PreparedData
from alignflow.flows.runbook import RunBook
from alignflow.tasks.registry import tracking as mlflow_runs
from alignflow.tasks.registry.base_guard import BASE_MODEL_TAG
from alignflow.tasks.registry.orphans import Orphan, reap_orphans
from alignflow.tasks.runtime.models import provenance
from alignflow.tasks.runtime.state import artifact_root, home, tracking_uri


def lineage_tags(config: PipelineConfig, data: PreparedData) -> dict[str, str]:
    """What a model version needs to be traced back to its data, code, config and Prefect run."""
    return {
        "dataset_uri": data.pairs.uri,
        "dataset_sha256": data.pairs.sha256,
        "config_hash": config_hash(config),
        "git_commit": mlflow_runs.git_commit(),
        "prefect_flow_run_id": str(flow_run.id),
        "prefect_flow_run_url": flow_run.ui_url or "",
        "method": config.training.method,
        BASE_MODEL_TAG: config.training.model_name_or_path,  # the champion's base, checked by the next run
        "base_model_sha256": data.base.sha256,
        "started_from": data.start_label,
        "train_dataset_sha256": data.train.sha256,
        "test_dataset_sha256": data.test.sha256,
        "validation.valid": str(data.validation.valid),
        "validation.quarantined": str(data.validation.quarantined),
        **(provenance(data.base.path) if data.base.uri.startswith("file://") else {}),  # package, version, file hash
        **chat_template.lineage(config.training.chat_template),  # its text: config/chat_template.jinja
    }


def open_book(
    config: PipelineConfig, data: PreparedData, run_name: str, params: dict[str, str] | None = None, **tags: str
) -> RunBook:
    """Start the flow's MLflow run, log the resolved config and what the data stages produced."""
    tracking = tracking_uri(config)
    end_orphans(tracking, config.registry.experiment)
    lineage = {**lineage_tags(config, data), **tags}
    # A tracking server stores artifacts where it is configured to; a local store, in the state dir.
    remote = tracking.startswith(("http://", "https://", "databricks"))
    run_id = mlflow_runs.start_run(
        tracking,
        config.registry.experiment,
        run_name,
        flatten(config) if params is None else params,
        lineage,
        None if remote else artifact_root(config),
    )
    book = RunBook(
        tracking=tracking,
        run_id=run_id,
        tags={
            **lineage,
            "training_run_id": run_id,
            "config_uri": f"runs:/{run_id}/config/resolved.yaml",
            "validation_report": f"runs:/{run_id}/validate/report.json",
        },
        run_prefix=config.name,
        scratch=home(config) / "scratch",
        ray_address=config.runtime.ray_address,
        flow_run_url=flow_run.ui_url,
    )
    try:
        _log_data(book, config, data)
    except BaseException:
        mlflow_runs.end_run(tracking, run_id, "FAILED")
        raise
    return book


def end_orphans(tracking: str, experiment: str) -> list[Orphan]:
    """End the runs a killed driver left behind: MLflow's KILLED, and their Prefect flow runs Crashed if
    still Running (a killed `alignflow run` leaves both for ever otherwise)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    logger = get_run_logger()
    reaped = reap_orphans(tracking, experiment)
    for orphan in reaped:
        logger.warning(
            "ended run %s (%s) as KILLED: its driver %s is gone", orphan.run_name, orphan.run_id, orphan.driver
        )
        if orphan.prefect_flow_run_id is None or orphan.prefect_flow_run_id == str(flow_run.id):
            continue
        try:
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(orphan.prefect_flow_run_id).state
                if state is not None and state.is_running():
                    message = f"its process ({orphan.driver}) is gone; found by flow run {flow_run.id}"
                    client.set_flow_run_state(orphan.prefect_flow_run_id, Crashed(message=message), force=True)
        except Exception as exc:  # noqa: BLE001 (another Prefect server's run, or deleted: the MLflow run is ended)
            logger.warning("Prefect flow run %s of that run left as it is: %s", orphan.prefect_flow_run_id, exc)
    return reaped


def _log_data(book: RunBook, config: PipelineConfig, data: PreparedData) -> None:
    book.log_text(mlflow_runs.config_yaml(config), "config/resolved.yaml")
    if config.training.chat_template is not None:
        book.log_text(config.training.chat_template.text, "config/chat_template.jinja")
    mlflow_runs.log_datasets(
        book.tracking,
        book.run_id,
        {"train": (data.train.uri, data.train.sha256), "test": (data.test.uri, data.test.sha256)},
        config.name,
    )
    generated = data.generation.model_dump()
    book.log_metrics({f"generate/{k}": v for k, v in generated.items() if isinstance(v, int | float)})
    book.log_metrics({"validate/valid": data.validation.valid, "validate/quarantined": data.validation.quarantined})
    folder = data.pairs.path.parent
    book.log_files(
        {
            "generate": folder / "report.json",
            "generate/pipeline": folder / "pipeline.yaml",
            "generate/lineage": folder / "lineage.json",  # content hash + pipeline hash
            "generate/failed": folder / "failed_rows.jsonl",
            "validate": Path(data.validation.files["report"]),
            "validate/quarantine": Path(data.validation.files["quarantine"]),
            "validate/summary": Path(data.validation.files["summary"]),
        }
    )
