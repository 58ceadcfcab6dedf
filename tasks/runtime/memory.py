"""What a model needs in memory, for every Ray worker alignflow starts (training, generation): the model's shape
read from its folder, the runtime's own share, and the memory of Ray's nodes. Training's estimate is in
tasks/training/memory.py; a generation step's is `inference_bytes`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
RUNTIME_BYTES = int(1.25 * GIB)  # torch, transformers, TRL and the Ray worker, imported: 1.04-1.15 GiB measured


@dataclass(frozen=True)
class ModelShape:
    """What an estimate reads from a model folder: parameter count and the transformer's dimensions."""

    parameters: int
    layers: int
    hidden: int
    intermediate: int
    vocab: int

    @classmethod
    def of(cls, model_dir: Path) -> ModelShape:
        from safetensors import safe_open

        config = json.loads((model_dir / "config.json").read_text())
        config = config.get("text_config", config)
        parameters = 0
        for file in sorted(model_dir.glob("*.safetensors")):
            with safe_open(str(file), "pt") as fh:
                parameters += sum(math.prod(fh.get_slice(key).get_shape()) for key in fh.keys())  # noqa: SIM118 - a safe_open handle
        hidden = int(config["hidden_size"])
        return cls(
            parameters=parameters,
            layers=int(config["num_hidden_layers"]),
            hidden=hidden,
            intermediate=int(config.get("intermediate_size", 4 * hidden)),
            vocab=int(config["vocab_size"]),
        )

    @classmethod
    def of_folder(cls, model: str | None) -> ModelShape | None:
        """The shape of a local model folder; None for anything else (a hub id, an endpoint)."""
        if not model or not (Path(model) / "config.json").is_file():
            return None
        return cls.of(Path(model))


def inference_bytes(shape: ModelShape, batch: int, tokens: int, use_gpu: bool = False) -> int:
    """A generation worker's memory: the runtime, the weights (float32 on CPU, bf16 on GPU), the KV cache of a
    batch (keys and values of every layer, at most hidden wide) and one step's logits over the vocabulary."""
    width = 2 if use_gpu else 4
    kv_cache = 2 * shape.layers * batch * tokens * shape.hidden * width
    logits = batch * shape.vocab * 4 * 3  # the last position's logits, their softmax and the sampling copy
    return int(RUNTIME_BYTES + shape.parameters * width + kv_cache + logits)


def node_memory() -> list[int]:
    """The `memory` resource of every alive Ray node (what Ray schedules by)."""
    import ray

    return [int(node["Resources"].get("memory", 0)) for node in ray.nodes() if node.get("Alive")]
