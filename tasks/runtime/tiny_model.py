"""The embedded default's base model, built offline: nothing is downloaded.

A Llama-architecture causal LM with a byte-level BPE tokenizer trained on the shipped
prompts and reference answers, and a chat template. A short causal-LM warm-up on the same
text makes it write on-topic (if rough) answers, so the judge has real differences to rate
and preference training has something to move. Deterministic from the seed; built once and
cached in the state directory under a key of its settings and corpus.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from alignflow.conf.loader import SHIPPED_PROMPTS
from alignflow.conf.training import TinyModelConfig
from alignflow.tasks.runtime.state import sha256_file, sha256_text

BUILD_VERSION = "1"  # bump when the build below changes what it produces

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


Progress = Callable[[str], None]  # takes one line: a Prefect run logger's info, print, ...


def tiny_model_dir(tiny: TinyModelConfig, models_dir: Path, progress: Progress | None = None) -> Path:
    """The tiny model's folder under models_dir, building it on first use and saying how far it is through
    `progress` (about every 10% of the warm-up)."""
    key = sha256_text(BUILD_VERSION, tiny.model_dump_json(), sha256_file(SHIPPED_PROMPTS))[:12]
    target = models_dir / f"tiny-llama-{key}"
    if not (target / "config.json").exists():
        build_tiny_model(tiny, target, progress)
    return target


def corpus() -> list[str]:
    """The shipped prompts and reference answers as chat transcripts: the tokenizer's and the warm-up's text."""
    rows = [json.loads(line) for line in SHIPPED_PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [f"<|user|>\n{r['prompt']}<|end|>\n<|assistant|>\n{r['reference']}<|end|>\n" for r in rows]


def train_tokenizer(texts: list[str], vocab_size: int):
    """The tiny model's byte-level BPE tokenizer with its chat template, trained on `texts` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|bos|>", eos_token="<|end|>", pad_token="<|pad|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 4096
    return tokenizer


def tokenizer_dir(tiny: TinyModelConfig, models_dir: Path) -> Path:
    """The tiny model's tokenizer alone, trained once under models_dir (a second or two of CPU, the same
    vocabulary and merges as the model's build): what validation counts tokens with, without building the
    model (a minute on a fresh state directory)."""
    key = sha256_text(BUILD_VERSION, str(tiny.vocab_size), sha256_file(SHIPPED_PROMPTS))[:12]
    target = Path(models_dir) / f"tiny-llama-tokenizer-{key}"
    if not (target / "tokenizer_config.json").exists():
        scratch = target.with_name(target.name + ".partial")
        shutil.rmtree(scratch, ignore_errors=True)
        train_tokenizer(corpus(), tiny.vocab_size).save_pretrained(scratch)
        shutil.rmtree(target, ignore_errors=True)
        scratch.rename(target)  # atomic: a half-written tokenizer is never picked up
    return target


def build_tiny_model(tiny: TinyModelConfig, target: Path, progress: Progress | None = None) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    started = time.perf_counter()
    torch.manual_seed(tiny.seed)
    texts = corpus()
    tokenizer = train_tokenizer(texts, tiny.vocab_size)
    say = progress or (lambda line: None)
    say(f"tiny model: tokenizer trained ({len(tokenizer)} tokens, {time.perf_counter() - started:.1f} s)")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_hidden_layers,
        num_attention_heads=tiny.num_attention_heads,
        num_key_value_heads=tiny.num_attention_heads,
        max_position_embeddings=tiny.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    losses = _warm_up(model, tokenizer, texts, tiny, say)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        max_new_tokens=64,
    )

    scratch = target.with_name(target.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    model.save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    (scratch / "alignflow_build.json").write_text(
        json.dumps(
            {
                "builder": "alignflow.tasks.tiny_model",
                "build_version": BUILD_VERSION,
                "settings": tiny.model_dump(),
                "parameters": sum(p.numel() for p in model.parameters()),
                "warmup_loss_first_last": [losses[0], losses[-1]] if losses else None,
                "seconds": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )
    shutil.rmtree(target, ignore_errors=True)
    scratch.rename(target)  # atomic: a half-built model is never picked up
    say(f"tiny model: built in {time.perf_counter() - started:.1f} s -> {target}")
    return target


def _warm_up(
    model, tokenizer, texts: list[str], tiny: TinyModelConfig, say: Progress, batch_size: int = 16
) -> list[float]:
    import torch
    from tqdm.auto import tqdm

    if tiny.warmup_steps == 0:
        return []
    encoded = tokenizer(texts, truncation=True, max_length=tiny.max_position_embeddings)["input_ids"]
    generator = torch.Generator().manual_seed(tiny.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / max(tiny.warmup_steps, 1))
    model.train()
    losses: list[float] = []
    started, every = time.perf_counter(), max(1, tiny.warmup_steps // 10)
    bar = tqdm(total=tiny.warmup_steps, desc="tiny model warm-up", unit="step", disable=None)  # a terminal only
    for step in range(1, tiny.warmup_steps + 1):
        picks = torch.randint(len(encoded), (batch_size,), generator=generator).tolist()
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in picks]}, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(round(loss.item(), 4))
        bar.update(1)
        if step % every == 0 or step == tiny.warmup_steps:
            elapsed = time.perf_counter() - started
            left = elapsed / step * (tiny.warmup_steps - step)
            say(
                f"tiny model warm-up: step {step}/{tiny.warmup_steps}, loss {losses[-1]:.3f}, {elapsed:.0f} s, ~{left:.0f} s left"
            )
    bar.close()
    model.eval()
    return losses
