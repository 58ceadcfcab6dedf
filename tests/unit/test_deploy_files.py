"""What can be checked of the deployment files without a Docker engine or a Kubernetes cluster:
deploy/prefect.yaml and the entry flow's form, conf/cluster.yaml against deploy/docker-compose.yml,
the Dockerfile, the KubeRay manifests, and the serve/deploy commands' argument checks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from alignflow.conf.loader import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ALIGNFLOW = str(REPO / ".venv" / "bin" / "alignflow")


def _yaml(path: Path):
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def prefect_yaml() -> dict:
    return _yaml(DEPLOY / "prefect.yaml")


@pytest.fixture(scope="module")
def compose() -> dict:
    return _yaml(DEPLOY / "docker-compose.yml")


@pytest.fixture(scope="module")
def cluster():
    return load_config(REPO / "conf" / "cluster.yaml")


def _command(service: dict) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else cmd


# --- deploy/prefect.yaml and the run form ---------------------------------------------------------


def test_prefect_yaml_declares_the_deployments(prefect_yaml):
    deployments = {d["name"]: d for d in prefect_yaml["deployments"]}
    assert {"nightly-alignment", "alignment-on-demand", "promote-model", "rollback-model"} <= set(deployments)
    assert prefect_yaml["pull"] == []  # module entrypoints: the worker imports the installed package
    nightly = deployments["nightly-alignment"]
    [schedule] = nightly["schedules"]
    assert schedule == {"cron": "0 2 * * *", "timezone": "UTC", "active": True}
    assert nightly["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert {d["work_pool"]["name"] for d in deployments.values()} == {"alignflow"}


def test_entrypoints_are_flows_with_typed_parameters(prefect_yaml):
    from prefect import Flow
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.importtools import import_object

    from alignflow.flows.profiles import profile_names

    flows = {d["name"]: import_object(d["entrypoint"]) for d in prefect_yaml["deployments"]}
    assert all(isinstance(f, Flow) for f in flows.values())
    form = parameter_schema(flows["alignment-on-demand"]).model_dump_for_openapi()["properties"]
    # Free text (a name, a path or URL on the worker, variable:NAME), the in-package names shown with it.
    assert form["profile"]["type"] == "string" and "enum" not in form["profile"]
    assert form["profile"]["examples"][: len(profile_names())] == list(profile_names())
    assert {"pipeline", "cluster", "recipes/orpo"} <= set(form["profile"]["examples"])
    assert all(f"`{name}`" in form["profile"]["description"] for name in profile_names())
    assert "variable:NAME" in form["profile"]["description"] and "s3://" in form["profile"]["description"]
    assert form["method"]["anyOf"][0]["enum"] == _schema_methods()  # every method, from the schema
    assert {"profile", "method", "beta", "learning_rate", "max_steps", "overrides"} == set(form)
    assert all(p.get("description") for p in form.values())
    promote = parameter_schema(flows["promote-model"]).model_dump_for_openapi()
    assert {"name", "version", "reason"} <= set(promote["required"])
    for d in prefect_yaml["deployments"]:  # deployment defaults are parameters the flow takes
        assert set(d.get("parameters") or {}) <= set(parameter_schema(flows[d["name"]]).properties)


def _schema_methods() -> list[str]:
    """The methods the config schema accepts, read off TrainingConfig's field (not a copy of the list)."""
    from typing import get_args

    from alignflow.conf.training import TrainingConfig

    return list(get_args(TrainingConfig.model_fields["method"].annotation))


def test_run_form_offers_exactly_the_schema_methods():
    from prefect.utilities.callables import parameter_schema

    from alignflow.flows.deployments import run_alignment
    from alignflow.flows.profiles import resolve_config

    methods = _schema_methods()
    assert {"dpo", "orpo", "cpo", "simpo"} <= set(methods)  # the read-off found the real list
    form = parameter_schema(run_alignment).model_dump_for_openapi()["properties"]
    assert form["method"]["anyOf"][0]["enum"] == methods
    for method in methods:  # and each choice resolves into a valid config
        assert resolve_config("pipeline", method=method).training.method == method


def test_knobs_resolve_over_the_profile_and_overrides():
    from alignflow.flows.profiles import resolve_config

    config = resolve_config("recipes/orpo", beta=0.3, overrides=["training.beta=0.2", "training.max_steps=5"])
    assert config.training.method == "orpo"  # the profile's, no knob set
    assert config.training.beta == 0.3  # the knob wins over the overrides
    assert config.training.max_steps == 5 and config.training.learning_rate == 5e-4
    assert resolve_config("pipeline", method="orpo", learning_rate=1e-5).training.method == "orpo"
    with pytest.raises(ConfigError, match="profile 'nope'"):
        resolve_config("nope")
    with pytest.raises(ConfigError, match="training.max_steps"):  # TRL's field type, checked when the config loads
        resolve_config("pipeline", overrides=["training.max_steps=many"])


# --- conf/cluster.yaml against docker-compose.yml --------------------------------------------------


def test_compose_file_is_valid_for_docker_compose():
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose (Debian's docker-compose 1.29) not installed: apt-get install -y docker-compose")
    # Credentials come from the environment: without them compose refuses (and names the variable).
    needed = re.findall(r"\$\{(\w+):\?", (DEPLOY / "docker-compose.yml").read_text())
    bare = {k: v for k, v in os.environ.items() if k not in needed}
    done = subprocess.run(
        [tool, "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"], capture_output=True, text=True, env=bare
    )
    assert done.returncode != 0 and any(name in done.stderr for name in needed)  # compose names the first it meets
    done = subprocess.run(
        [tool, "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        env={**bare, **dict.fromkeys(needed, "x")},
    )
    assert done.returncode == 0, done.stderr


def test_cluster_profile_points_at_the_compose_services(cluster, compose):
    services = compose["services"]
    # MLflow: the tracking URI's host and port are the mlflow service and the port it serves on.
    tracking = urlparse(cluster.runtime.tracking_uri)
    mlflow_cmd = _command(services[tracking.hostname])
    assert f"--port {tracking.port}" in mlflow_cmd and "--serve-artifacts" in mlflow_cmd
    assert "--app-name basic-auth" in mlflow_cmd and "s3://mlflow" in mlflow_cmd
    assert "@mlflow-postgres:5432/mlflow" in services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    # Ray: the worker container joins the head as a node, so the flow reaches it with `auto`.
    assert cluster.runtime.ray_address == "auto"
    assert "--port=6379" in _command(services["ray-head"])
    assert "ray start --address=ray-head:6379" in _command(services["worker"])
    assert "ray start --address=ray-head:6379" in _command(services["ray-worker"])
    assert cluster.training.scaling.use_gpu and cluster.training.scaling.resources_per_worker["GPU"] == 1
    [gpus] = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpus["driver"] == "nvidia" and "gpu" in gpus["capabilities"]
    # Checkpoints in the MinIO bucket the one-shot service creates; S3 endpoint in every node's env.
    bucket = urlparse(cluster.training.storage).netloc
    assert cluster.training.storage.startswith("s3://") and f"local/{bucket}" in _command(services["minio-buckets"])
    # Paths are shared: state dir and models on the volume every alignflow container mounts at /data.
    shared = [s for s in services.values() if s.get("image", "").startswith("${ALIGNFLOW_IMAGE")]
    assert {n for n, s in services.items() if s in shared} == {"mlflow", "ray-head", "ray-worker", "worker"}
    for service in shared:
        assert "alignflow-data:/data" in service["volumes"]
        assert service["environment"]["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    for path in (
        services["worker"]["environment"]["ALIGNFLOW_HOME"],  # the profile leaves the state dir to the env
        cluster.training.model_name_or_path,
        *(g.model for g in cluster.generation.generators),
    ):
        assert str(path).startswith("/data/")
    # The worker deploys with the cluster profile and reaches the server by its service name.
    worker = services["worker"]
    assert "alignflow deploy --profile cluster" in _command(worker)
    api = urlparse(worker["environment"]["PREFECT_API_URL"])
    assert api.hostname == "prefect-server" and f"--port {api.port}" in _command(services["prefect-server"])
    assert set(worker["depends_on"]) == {"prefect-server", "mlflow", "ray-head"}


def test_compose_services_are_wired_consistently(compose):
    services = compose["services"]
    for name, service in services.items():
        for needed in service.get("depends_on", {}):
            assert needed in services, f"{name} depends on an unknown service {needed}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in compose["volumes"], f"{name} mounts an undeclared volume {source}"
    database = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert database.startswith("postgresql+asyncpg://prefect:") and "@prefect-postgres:5432/prefect" in database
    assert services["prefect-server"]["image"] == f"prefecthq/prefect:{version('prefect')}-python3.11"
    assert services["prefect-postgres"]["environment"]["POSTGRES_DB"] == "prefect"
    assert services["mlflow-postgres"]["environment"]["POSTGRES_DB"] == "mlflow"
    # The env alignflow reads (flows/links.py, tasks/state.py) is set on the worker.
    env = services["worker"]["environment"]
    for key in ("ALIGNFLOW_HOME", "ALIGNFLOW_MLFLOW_UI_URL", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        assert env[key], key
    # Auth as `alignflow stack up` tested it: every secret from the environment, none with a default.
    assert services["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"].startswith(
        "${PREFECT_API_AUTH_STRING:?"
    )
    for key in (
        "PREFECT_API_AUTH_STRING",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
    ):
        assert env[key].startswith(f"${{{key}:?"), key
    text = (DEPLOY / "docker-compose.yml").read_text()
    assert not re.search(r"\$\{\w*(PASSWORD|SECRET|AUTH)\w*:-", text), "a secret with a default value"


def test_dockerfile_installs_the_tested_versions():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    assert "-c constraints.txt -e ." in text  # editable: `alignflow deploy` finds deploy/prefect.yaml
    for folder in ("conf", "flows", "tasks", "deploy"):
        assert f"COPY {folder} ./{folder}" in text
    constraints = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
    assert f"ARG S3FS_VERSION={constraints['fsspec']}" in text  # s3fs releases pair with fsspec's


# --- KubeRay -----------------------------------------------------------------------------------------


def test_kuberay_manifests():
    cluster = _yaml(DEPLOY / "kuberay" / "raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert cluster["spec"]["rayVersion"] == version("ray")
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    [gpu] = cluster["spec"]["workerGroupSpecs"]
    [container] = gpu["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]

    storage = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "kuberay" / "storage.yaml").read_text())}
    assert "ReadWriteMany" in storage["PersistentVolumeClaim"]["spec"]["accessModes"]
    for pod in (head["template"]["spec"], gpu["template"]["spec"]):
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert claims == {storage["PersistentVolumeClaim"]["metadata"]["name"]}
        refs = pod["containers"][0]["envFrom"]
        assert {r["configMapRef"]["name"] for r in refs if "configMapRef" in r} == {
            storage["ConfigMap"]["metadata"]["name"]
        }
        assert {r["secretRef"]["name"] for r in refs if "secretRef" in r} == {"alignflow-credentials"}
    assert "Secret" not in storage  # credentials are created from the environment, never kept in the repo

    job = _yaml(DEPLOY / "kuberay" / "rayjob.yaml")
    assert job["kind"] == "RayJob" and job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    config = re.search(r"--config (\S+)", job["spec"]["entrypoint"]).group(1)
    assert config.startswith("/opt/alignflow/") and "WORKDIR /opt/alignflow" in (DEPLOY / "Dockerfile").read_text()
    assert (REPO / config.removeprefix("/opt/alignflow/")).exists()
    assert "runtime.ray_address=auto" in job["spec"]["entrypoint"]


# --- commands --------------------------------------------------------------------------------------


def test_serve_and_deploy_refuse_bad_input_before_starting_anything():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    done = subprocess.run(
        [ALIGNFLOW, "serve", "training.beta=abc"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 2 and "training.beta" in done.stderr
    done = subprocess.run(
        [ALIGNFLOW, "deploy", "--profile", "nope"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 2 and "profile 'nope'" in done.stderr
    done = subprocess.run([ALIGNFLOW, "deploy"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "PREFECT_API_URL" in done.stderr


def test_make_serve_and_ci_install_the_browser():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^serve: \$\(STAMP\).*\n\t\$\(BIN\)/alignflow serve \$\(ARGS\)", makefile, re.M)
    ci = (REPO / ".ci" / "run").read_text()
    assert "missing+=(chromium-driver)" in ci and ci.index("apt-get install") < ci.index("make test")
