"""A training on S3 storage (production-stack test: pytest -m stack): the workers get their inputs through it."""

from __future__ import annotations

import uuid

import pytest

# The training runs in a process of its own, so that its local Ray starts with the S3 credentials in its
# workers' environment.
S3_TRAINING = """
import json, sys
from alignflow.conf.loader import load_config
from alignflow.tasks.runtime.state import Ref, configure_environment, sha256_file
from alignflow.tasks.training.driver import train_model
from alignflow.tasks.training.job import TrainJob
overrides, model, data, storage = json.loads(sys.argv[1])
cfg = load_config(None, overrides)
configure_environment(cfg)
ref = Ref(uri="file://" + data, sha256=sha256_file(data))
result = train_model(TrainJob(cfg.training, model, ref, storage, "s3-staging", f"sqlite:///{cfg.runtime.home}/mlflow.db"))
print("RESULT " + json.dumps({"steps": result.steps, "model": result.model.uri}))
"""


@pytest.mark.integration
@pytest.mark.stack
def test_a_training_on_s3_storage_gets_its_inputs_through_it(tmp_path, tiny_model_path, pairs_frame):
    import json
    import os
    import shutil
    import subprocess
    import sys

    pytest.importorskip("boto3", reason="the stack extra is not installed")
    from conftest import SMALL

    from alignflow.flows.ops.processes import HOST, free_ports, terminate
    from alignflow.flows.ops.serve import _bin
    from alignflow.flows.ops.stack_services import Ports, s3_client, start_s3
    from alignflow.tasks.runtime.state import sha256_file, sha256_tree

    if not shutil.which(_bin("weed")):
        pytest.skip("SeaweedFS (weed) is not installed")
    root = tmp_path / "stack"
    root.mkdir()
    ports = Ports(s3=free_ports(1)[0])
    keys = {"AWS_ACCESS_KEY_ID": "staging", "AWS_SECRET_ACCESS_KEY": uuid.uuid4().hex}
    env = {**os.environ, **keys, "AWS_ENDPOINT_URL": f"http://{HOST}:{ports.s3}", "AWS_DEFAULT_REGION": "us-east-1"}
    env.pop("RAY_ADDRESS", None)
    node = tmp_path / "node"
    data = tmp_path / "driver" / "train.parquet"
    data.parent.mkdir()
    pairs_frame.head(8).to_parquet(data, index=False)
    storage = "s3://alignflow/staging-test"
    overrides = [*SMALL, f"runtime.home={tmp_path / 'home'}", "training.max_steps=2", f"training.storage={storage}"]
    record = start_s3(root, ports, env)
    try:
        done = subprocess.run(
            [sys.executable, "-c", S3_TRAINING, json.dumps([overrides, str(tiny_model_path), str(data), storage])],
            env={**env, "ALIGNFLOW_NODE_DIR": str(node)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.split("RESULT ", 1)[1].splitlines()[0])
        assert result["steps"] == 2
        stored = {
            o["Key"]
            for o in s3_client(env).list_objects_v2(Bucket="alignflow", Prefix="staging-test/inputs/")["Contents"]
        }
    finally:
        terminate(record, grace=5)
    data_sha, model_sha = sha256_file(data), sha256_tree(tiny_model_path)
    assert f"staging-test/inputs/{data_sha}/train.parquet" in stored
    assert f"staging-test/inputs/{model_sha}/{tiny_model_path.name}/config.json" in stored
    # The worker read its own node's copies.
    assert (node / "inputs" / data_sha / "train.parquet").read_bytes() == data.read_bytes()
    assert (node / "inputs" / model_sha / tiny_model_path.name / "config.json").is_file()
    assert list((node / "scratch").iterdir())
