"""Stack figures into bench/results/stack.json: what it costs to bring the stack up and down, what an
unauthenticated client gets, and how fast a cluster profile fails here.

    .venv/bin/python bench/stack.py [--no-ray] [--out bench/results/stack.json]

Every address is 127.0.0.1; the stack runs on free ports in a fresh state directory and is stopped at
the end. Node-failure figures come from bench/node_failure.py and load figures from bench/stack_load.py (both
kept here when this script rewrites the file).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alignflow.flows.ops.processes import free_ports, http_status
from alignflow.flows.ops.stack import stack_down, stack_up
from alignflow.flows.ops.stack_services import Ports, ray_node_count

REPO = Path(__file__).resolve().parents[1]


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _post_status(url: str, headers: dict[str, str] | None = None) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def preflight_figures() -> dict:
    """`alignflow run --config conf/cluster.yaml` here: exit code, seconds, the key it names."""
    home = Path(tempfile.mkdtemp(prefix="afbench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS", "MLFLOW_", "PREFECT_"))}
    env.update(ALIGNFLOW_HOME=str(home / "state"), AWS_EC2_METADATA_DISABLED="true")
    started = time.monotonic()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "alignflow"), "run", "--config", str(REPO / "conf" / "cluster.yaml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
    )
    seconds = time.monotonic() - started
    first = next((line for line in done.stderr.splitlines() if line.startswith("unreachable")), "")
    created = (home / "state").exists()
    shutil.rmtree(home, ignore_errors=True)
    return {
        "exit_code": done.returncode,
        "seconds": round(seconds, 1),
        "first_unreachable": first,
        "state_dir_created": created,
    }


def stack_figures(with_ray: bool) -> dict:
    home = Path(tempfile.mkdtemp(prefix="afbench-", dir="/tmp"))
    home.chmod(0o755)
    ports = Ports(*free_ports(5))
    started = time.monotonic()
    env = stack_up(home, ports, ray=with_ray)
    up_seconds = time.monotonic() - started
    user, password = env["PREFECT_API_AUTH_STRING"].split(":", 1)
    mlflow_search = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=1"
    figures = {
        "up_seconds": round(up_seconds, 1),
        "ray_nodes": ray_node_count(env["RAY_ADDRESS"]) if with_ray else 0,
        "unauthenticated": {
            "prefect_api": _post_status(f"{env['PREFECT_API_URL']}/deployments/filter"),
            "mlflow_api": http_status(mlflow_search),
            "s3": http_status(f"{env['AWS_ENDPOINT_URL']}/mlflow/"),
        },
        "authenticated": {
            "mlflow_api": http_status(
                mlflow_search, _basic(env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
            ),
        },
        "authenticated_prefect_api": _post_status(
            f"{env['PREFECT_API_URL']}/deployments/filter", _basic(user, password)
        ),
    }
    started = time.monotonic()
    figures["stopped"] = stack_down(home)
    figures["down_seconds"] = round(time.monotonic() - started, 1)
    shutil.rmtree(home, ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "stack.json")
    args = parser.parse_args()
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 1) for x in os.getloadavg()],
        },
        "preflight_cluster_profile": preflight_figures(),
        "stack": stack_figures(not args.no_ray),
    }
    if args.out.exists():  # bench/node_failure.py's and bench/stack_load.py's figures live in the same file
        current = json.loads(args.out.read_text())
        result.update({k: current[k] for k in ("node_failure", "load") if k in current})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
