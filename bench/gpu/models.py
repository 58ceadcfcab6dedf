"""What every row of the GPU benchmark runs on (bench/gpu/run.py): the paths and shapes, the Bench a row is
given, the tokenizer, models and data built here (nothing is downloaded), and the FLOPs arithmetic of MFU.

MFU (BENCHMARKS.md): model FLOPs per token F = 2N + 4*L*d*s for a forward pass, N the weights of
every matrix product including the LM head; a trained token costs 3F (2F with LoRA: the frozen
weights get no weight gradients), plus F for the DPO reference forward, whose time counts too when
precomputed. MFU = tokens x FLOPs per token / (seconds x the GPU's dense bf16 peak).

Imported by its plain name from run.py and the row modules beside it. Nothing heavy is imported at its top
(torch, transformers, datasets and alignflow only inside the functions), so nothing reads a package the kit
carries before run.py's bootstrap_imports() has put the carried wheels first on sys.path.
"""

from __future__ import annotations

import gc
import random
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "conf" / "cluster.yaml"
SITE_ENV = "ALIGNFLOW_GPU_SITE"  # where the kit was installed; spawned children read it too
# A folder named site-packages: datasets hashes its map functions with dill, which pickles modules from
# anywhere else by value (and fails on pyarrow's types) rather than by reference.
SITE = Path(tempfile.gettempdir()) / "alignflow-gpu" / "site-packages"
QWEN25_05B = dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
)  # fmt: skip
# Dense bf16 peaks by the vendors' datasheets (FLOP/s), by a substring of torch's device name; first match wins.
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100", 989.4e12), ("H200", 989.4e12), ("A100", 312e12), ("L40S", 362e12)]

# SmolLM2-135M's shape (for the FLOP count; its folder holds the weights)
SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3)  # fmt: skip


@dataclass
class Bench:
    home: Path
    smoke: bool
    shape: dict
    seq: int
    batch: int | None  # None: conf/cluster.yaml's
    warmup: int
    timed: int
    model_path: str = ""
    tokenizer: object = None
    peak: float | None = None

    @property
    def device(self) -> str:
        return "cpu" if self.smoke else "cuda"


def peak_flops(device_name: str | None) -> float | None:
    return next((peak for key, peak in PEAK_BF16 if device_name and key in device_name), None)


# --- models, tokenizer and data built here (nothing is downloaded) --------------------------------


def byte_tokenizer():
    """Byte-level BPE without merges: one token per byte, so text length sets sequence length exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from alignflow.tasks.runtime.tiny_model import CHAT_TEMPLATE, SPECIAL_TOKENS

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(SPECIAL_TOKENS + alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|pad|>", eos_token="<|end|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(path: Path, shape: dict, tokenizer, device: str, dtype: str, ascii_only: bool = False) -> str:
    """Random weights in `shape` (a Qwen2Config), saved with the tokenizer. `ascii_only`: generation may pick
    only printable-ASCII byte tokens, so every response is as long as max_new_tokens and re-tokenizes 1:1."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**shape, tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    if ascii_only:
        allowed = set(tokenizer("".join(map(chr, range(32, 127))), add_special_tokens=False)["input_ids"])
        model.generation_config.suppress_tokens = [i for i in range(shape["vocab_size"]) if i not in allowed]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    return str(path)


def preference_data(rows: int, seq: int, seed: int = 0):
    """`rows` pairs of exactly `seq` tokens each side: a quarter prompt, the rest response (with its EOS)."""
    import datasets

    rng = random.Random(seed)
    letters = string.ascii_lowercase + " "

    def text(k: int) -> str:
        return "".join(rng.choices(letters, k=k))

    prompt, response = seq // 4, seq - seq // 4 - 1
    return datasets.Dataset.from_dict({"prompt": [text(prompt) for _ in range(rows)],
                                       "chosen": [text(response) for _ in range(rows)],
                                       "rejected": [text(response) for _ in range(rows)]})  # fmt: skip


def matmul_weights(shape: dict) -> int:
    """N: the weights of every matrix product of a forward pass, the LM head included."""
    d, layers = shape["hidden_size"], shape["num_hidden_layers"]
    head_dim = d // shape["num_attention_heads"]
    q, kv = shape["num_attention_heads"] * head_dim, shape["num_key_value_heads"] * head_dim
    per_layer = 2 * d * q + 2 * d * kv + 3 * d * shape["intermediate_size"]
    return layers * per_layer + shape["vocab_size"] * d


def forward_flops(shape: dict, seq: float) -> float:
    """F: one token's forward pass, matrix products (2N) plus attention scores and values (4*L*d*s)."""
    return 2 * matmul_weights(shape) + 4 * shape["num_hidden_layers"] * shape["hidden_size"] * seq


def cluster_profile(home: Path) -> Path:
    """conf/cluster.yaml's training and generation sections, alone: the benchmark's settings, which other
    sections (services, registry, evaluation) can neither change nor break."""
    import yaml

    sections = yaml.safe_load(CLUSTER.read_text())
    path = home / "cluster-bench.yaml"
    path.write_text(yaml.safe_dump({k: sections[k] for k in ("name", "training", "generation") if k in sections}))
    return path


def release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
