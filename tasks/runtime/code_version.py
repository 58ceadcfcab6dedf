"""Which code ran, who ran it and from where: the lineage tags every MLflow run starts with.

A deployment's flow runs in a Prefect worker's scratch folder, not in the repository, so the commit is
read from where the package's code lies (an editable install: the checkout), not from the working
directory; with no git there (a wheel, an image without .git), the package version plus a hash of the
installed code stands in. The user is the one the tracking server knows (MLFLOW_TRACKING_USERNAME)
when it asks for one, else the OS user; the source is the Prefect deployment, or the command line.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # holds conf/, flows/, tasks/ (the checkout when editable)


@functools.cache
def code_version() -> str:
    """`<commit>` (`<commit>-dirty` with uncommitted changes to tracked files) in a git checkout, else
    `<package version>+sha256.<12 hex of the installed code>`."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "conf", "flows", "tasks"],
            cwd=PACKAGE_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        if head:
            return f"{head}-dirty" if dirty else head
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{_package_version()}+sha256.{code_hash()[:12]}"


def _package_version() -> str:
    try:
        return version("alignflow")
    except PackageNotFoundError:
        return "0+unknown"


def code_hash(root: Path | None = None) -> str:
    """sha256 over the package's source files (names and contents), in a stable order."""
    root = root or PACKAGE_ROOT
    digest = hashlib.sha256()
    for folder in ("conf", "flows", "tasks"):
        for file in sorted((root / folder).rglob("*")):
            if file.is_file() and file.suffix in (".py", ".yaml", ".jsonl") and "__pycache__" not in file.parts:
                digest.update(file.relative_to(root).as_posix().encode())
                digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def run_user() -> str:
    """The tracking server's user when it authenticates (basic auth), else the OS user."""
    try:
        return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return str(os.getuid())


def run_source() -> tuple[str, str]:
    """(mlflow.source.name, mlflow.source.type): the Prefect deployment a run came from, else the command."""
    try:
        from prefect.runtime import deployment, flow_run

        if deployment.name:
            return f"prefect deployment {flow_run.flow_name}/{deployment.name}", "JOB"
    except Exception:  # no Prefect context: not inside a flow run
        pass
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:2]]) if sys.argv and sys.argv[0] else "python"
    return command, "LOCAL"


def context_tags() -> dict[str, str]:
    """MLflow's own context tags (the fluent API sets them; MlflowClient.create_run does not)."""
    source, kind = run_source()
    commit = code_version()
    tags = {"mlflow.user": run_user(), "mlflow.source.name": source, "mlflow.source.type": kind, "code_version": commit}
    if "+" not in commit:  # a git commit, not a package version
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
    return tags
