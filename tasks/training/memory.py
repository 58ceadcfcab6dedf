"""A training worker's memory: what alignflow cuts without changing the result, what a worker is estimated to
need (so Ray schedules it by memory, not by CPU alone), and the one line a stage ends with when memory runs out.

Measured on SmolLM2-135M at batch 4 x 512 (bench/train_memory.py, BENCHMARKS.md "Training memory"): most of a
worker's peak was not live tensors but (1) a step's activations with activation checkpointing off, (2) glibc's
heap keeping freed activations resident (tasks/runtime/ray.py HEAP_TUNABLES), and (3) TRL's fused LM head
holding ~6 float32 copies of a 4,096-token x 32,768-entry tile on CPU. The estimate below follows the same terms.
"""

from __future__ import annotations

from alignflow.conf.training import TrainingConfig, activation_checkpointing
from alignflow.tasks.runtime.memory import GIB, RUNTIME_BYTES, ModelShape, node_memory

__all__ = [
    "GIB",
    "RUNTIME_BYTES",
    "ModelShape",
    "OutOfMemory",
    "node_memory",
    "reservation",
    "fits_beside",
    "run_bytes",
    "worker_bytes",
]

LOGPROB_TILE_TOKENS_CPU = 512  # TRL's fused LM head, tokens per tile on CPU (TRL's own: 4,096)
TRL_TILE_VOCAB = 32_768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE: vocabulary entries per tile
FUSED_HEAD_METHODS = ("dpo",)  # trainers that score through TRL's fused LM head; the others materialise logits


def bound_logprob_tiles(use_gpu: bool) -> None:
    """On CPU, TRL's fused LM head scores 512 tokens a tile instead of 4,096.

    Without Triton its torch path holds about six float32 copies of a tile at once (4,096 x 32,768 x 4 bytes
    = 512 MiB each: ~3 GiB). Every token's row is computed on its own and the vocabulary tiling (and so the order
    of the log-sum-exp) is unchanged, so the log-probs are the same values (tests/integration/test_train_memory.py)."""
    if use_gpu:
        return  # the Triton kernel's tiles live in registers and shared memory, not in host RAM
    from trl.kernels import chunked_logprob

    chunked_logprob.TOKEN_CHUNK_SIZE = min(chunked_logprob.TOKEN_CHUNK_SIZE, LOGPROB_TILE_TOKENS_CPU)


def worker_bytes(training: TrainingConfig, shape: ModelShape, stage: str) -> int:
    """A training worker's peak memory, estimated: runtime + weights (+ DPO's reference copy) + gradients and
    Adam's moments of the trainable parameters + one step's activations and log-prob buffers. Under FSDP (`fsdp`)
    each worker holds 1/num_workers of the weights, gradients and moments (full shard) between layers.

    `stage` is "sft", the preference method or "reward" (no reference model, a one-output score head). Tokens per
    step are the worst case: every sequence at max_length (a preference or reward batch holds chosen and rejected,
    twice the rows)."""
    width = 2 if training.scaling.use_gpu else 4  # bf16 on GPU, float32 on CPU
    lora = training.knob("use_peft", bool)
    trainable = (
        _lora_parameters(shape, training.knob("lora_r", int)) if lora else shape.parameters
    )  # frozen weights have no gradients and no optimizer state
    shards = training.scaling.num_workers if training.knobs.get("fsdp") else 1  # FSDP full shard: 1/N of each
    # QLoRA (load_in_4bit / load_in_8bit): the frozen weights in half a byte or one byte (embeddings and the
    # LM head, left in bf16 by bitsandbytes, are not told apart here)
    stored = 0.5 if training.knob("load_in_4bit", bool) else 1 if training.knob("load_in_8bit", bool) else width
    weights = int(shape.parameters * stored) // shards
    optimizer = trainable * (width + 8) // shards  # the gradient, and Adam's two float32 moments
    reference = shape.parameters * width // shards if stage == "dpo" and not lora else 0
    precomputed = training.knob("precompute_ref_log_probs", bool)
    rows = training.knob("per_device_train_batch_size", int) * (1 if stage == "sft" else 2)
    tokens = rows * int(training.knob("max_length", object) or 2048)  # None: no truncation
    layer = tokens * (20 * shape.hidden + 6 * shape.intermediate) * width * (1.5 if lora else 1.0)
    if activation_checkpointing(training) or _fsdp_checkpointing(training):
        activations = shape.layers * tokens * shape.hidden * width + layer  # layer inputs kept; one layer recomputed
    else:
        activations = shape.layers * layer
    vocab_tile = min(shape.vocab, TRL_TILE_VOCAB)
    if stage == "reward":
        head = 0  # a reward model's head has one output: no vocabulary-wide logits to hold
    elif stage in FUSED_HEAD_METHODS or stage == "sft":
        tile_tokens = 4096 if training.scaling.use_gpu else LOGPROB_TILE_TOKENS_CPU
        head = 6 * min(tokens, tile_tokens) * vocab_tile * 4
    else:
        head = 4 * tokens * shape.vocab * 4  # ORPO/CPO: full float32 logits, their log-softmax and both gradients
    # precomputed reference log-probs: TRL loads no reference copy (the policy computes them before step one)
    return int(RUNTIME_BYTES + weights + optimizer + activations + head + (0 if precomputed else reference))


def _lora_parameters(shape: ModelShape, rank: int) -> int:
    # all-linear LoRA: per layer, A and B of q, k, v, o (about 4 x hidden in and out) and the MLP's three
    return shape.layers * rank * (8 * shape.hidden + 3 * (shape.hidden + shape.intermediate))


def _fsdp_checkpointing(training: TrainingConfig) -> bool:
    """FSDP's own activation checkpointing (fsdp_config.activation_checkpointing), which replaces the argument's."""
    own = training.knobs.get("fsdp_config")
    own = {k.removeprefix("fsdp_"): v for k, v in own.items()} if isinstance(own, dict) else {}
    return bool(training.knobs.get("fsdp")) and str(own.get("activation_checkpointing", "false")).lower() == "true"


def oom_line(stage: str, needed: int | None, available: int | None, workers: int = 1, refused: bool = False) -> str:
    """The one line a stage ends with when memory runs out (or is refused before it starts): which stage, how
    much was needed and available, and the settings to change."""
    amounts = [f"~{needed / GIB:.1f} GiB a worker x {workers}" if needed else "", ""]
    if available:
        amounts[1] = f"the largest node has {available / GIB:.1f} GiB"
    what = "not started: it needs more memory than the cluster has" if refused else "a worker was killed for memory"
    detail = "; ".join(a for a in amounts if a)
    return (
        f"{stage}: {what}{f' ({detail})' if detail else ''}; lower training.per_device_train_batch_size or "
        "training.max_length, set training.use_peft=true, or use fewer training.scaling.num_workers "
        "(training.scaling.resources_per_worker.memory sets what a worker reserves, in bytes)"
    )


class OutOfMemory(RuntimeError):
    """A training stage refused before it started, or ended, for memory; the message is the one line to show."""


def reservation(training: TrainingConfig, model: str, stage: str) -> tuple[dict[str, float], int | None]:
    """What each Ray worker of the stage reserves: training.scaling.resources_per_worker plus `memory` (bytes,
    Ray's own resource name), estimated from the model folder unless set there; and that amount (None when the
    model is not a local folder to read)."""
    declared = dict(training.scaling.resources_per_worker)
    if "memory" in declared:
        return declared, int(declared["memory"])
    shape = ModelShape.of_folder(model)
    if shape is None:
        return declared, None
    needed = worker_bytes(training, shape, stage)
    return {**declared, "memory": float(needed)}, needed


def _autoscaling() -> bool:
    """Whether the cluster has an autoscaler config: then Ray itself refuses what its largest nodes cannot hold
    (InsufficientClusterResourcesError), and nodes that are not up yet may still come."""
    try:
        from ray._private.state import state

        return bool(state.get_max_resources_from_cluster_config())
    except Exception:  # noqa: BLE001 - a private API: when it moves, fall back to the alive nodes
        return False


def run_bytes(training: TrainingConfig, model: str) -> int | None:
    """What a training run holds at once over its workers: its heaviest stage's reservation x num_workers (None
    when the model is not a local folder to read)."""
    stages = [training.method, *(["sft"] if training.sft.enabled else [])]
    amounts = [reservation(training, model, stage)[1] for stage in stages]
    if any(amount is None for amount in amounts):
        return None
    return max(amounts) * training.scaling.num_workers


def fits_beside(held: list[int], need: int, room: int) -> bool:
    """Whether a run needing `need` bytes fits beside runs holding `held` in a cluster of `room`. A run with
    nothing beside it always starts: train_model's refuse_unless_fits says whether it can ever fit."""
    return not held or sum(held) + need <= room


def refuse_unless_fits(stage: str, needed: int | None, workers: int) -> None:
    """Raise OutOfMemory, before any worker starts, when the alive nodes can never hold `workers` workers of
    `needed` bytes each. Workers that fit the nodes but not what is free now are queued by Ray (a run beside
    this one, another recipe), never started into memory that is not there."""
    if needed is None or _autoscaling():
        return
    nodes = node_memory()
    room = sum(int(free // needed) for free in nodes)
    if room < workers:
        raise OutOfMemory(
            oom_line(stage, needed, max(nodes, default=0), workers=workers, refused=True)
            + f" ({room} of {workers} workers fit the cluster's {len(nodes)} node(s))"
        )


def killed_for_memory(exc: BaseException) -> bool:
    """Whether a training failure is memory running out: Ray's memory monitor killing a worker, or an allocation
    failing inside one (Ray Train wraps both; the workers' errors are in `worker_failures`)."""
    import ray.exceptions

    seen, pending = set(), [exc]
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, ray.exceptions.OutOfMemoryError | MemoryError) or any(m in str(error) for m in _OOM_MARKS):
            return True
        pending.extend([error.__cause__, error.__context__, *getattr(error, "worker_failures", {}).values()])
    return False


_OOM_MARKS = (
    "OutOfMemoryError",
    "killed due to memory pressure",
    "memory monitor",
    "DefaultCPUAllocator: can't allocate memory",
    "CUDA out of memory",
)
