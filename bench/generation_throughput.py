"""Generation throughput: the distilabel generate stage against transformers `generate` called directly.

    .venv/bin/python bench/generation_throughput.py [--prompts 228] [--home DIR]

Side by side in one run, on the same prompts (the shipped set), the same model (the offline
tiny model of conf/pipeline.yaml) and the same generators (conf/pipeline.yaml: two samplers,
64 new tokens, batches of generation.input_batch_size):

  - distilabel: the whole generate stage (tasks/generation/stage.generate_preferences): a spawned
    process, one distilabel step process per generator (they run at the same time), the
    offline judge, binarization and the files;
  - direct: this process loads the model once and calls `model.generate` on left-padded
    batches of the same size, with the same chat template and sampling settings, generator
    after generator.

Responses/s and tokens/s (the responses re-tokenized with the model's tokenizer, the same way
for both) over two spans: the wall time, start-up and model loading included on both sides;
and the generation phase (direct: the generate calls; distilabel: first generator batch
started to last one finished, from the stage report's generation_phase_s). Rounds alternate
the two sides; the best round of each counts (the machine is shared). Target: distilabel /
direct >= 0.8 in responses/s.

Results: bench/results/generation_throughput.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignflow.conf.loader import load_config  # noqa: E402
from alignflow.tasks.runtime.state import configure_environment  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "generation_throughput.json"


def count_tokens(tokenizer, texts: list[str]) -> int:
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


def distilabel_stage(cfg, rows: list[dict], model_path: str, out: Path) -> tuple[dict, list[str]]:
    import pandas as pd

    from alignflow.tasks.generation.stage import generate_preferences

    started = time.perf_counter()
    _, report = generate_preferences(rows, cfg.generation, [model_path] * len(cfg.generation.generators), out)
    wall = time.perf_counter() - started
    texts = [t for cands in pd.read_parquet(out / "candidates.parquet")["candidates"] for t in cands]
    measured = {"wall_s": wall, "generate_s": report.generation_phase_s, "responses": len(texts)}
    return measured, texts


def direct_generate(cfg, rows: list[dict], model_path: str) -> tuple[dict, list[str]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from alignflow.tasks.generation.llms import generation_kwargs

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    loaded = time.perf_counter()
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": r["prompt"]}], tokenize=False, add_generation_prompt=True
        )
        for r in rows
    ]
    batch = cfg.generation.input_batch_size
    texts: list[str] = []
    for i, gen in enumerate(cfg.generation.generators):
        set_seed(cfg.runtime.seed + i)
        kwargs = generation_kwargs(gen)  # the same settings the distilabel step sends
        for start in range(0, len(prompts), batch):
            enc = tokenizer(prompts[start : start + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                out = model.generate(
                    **enc,
                    **kwargs,
                    top_k=0,  # as distilabel's TransformersLLM passes it (no top-k filtering)
                    num_return_sequences=gen.num_generations,
                    pad_token_id=tokenizer.eos_token_id,
                )
            texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    done = time.perf_counter()
    return {"wall_s": done - started, "generate_s": done - loaded, "responses": len(texts)}, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=None, help="first N shipped prompts (default: all)")
    parser.add_argument("--home", type=Path, default=None, help="state directory (default: a temporary one)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each side counts")
    parser.add_argument("--tag", default="", help="results go to generation_throughput-TAG.json")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="key.path=value config overrides, e.g. a bigger offline model: training.tiny_model.hidden_size=512",
    )
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="alignflow-genbench-"))
    overrides = [f"runtime.home={home}"] + ([f"generation.max_prompts={args.prompts}"] if args.prompts else [])
    overrides += args.overrides
    cfg = load_config(ROOT / "conf" / "pipeline.yaml", overrides)
    configure_environment(cfg)
    os.environ.setdefault("TQDM_DISABLE", "1")

    from transformers import AutoTokenizer

    from alignflow.tasks.generation.prompts import load_prompts
    from alignflow.tasks.runtime.models import resolve_model

    model_path = str(resolve_model(cfg.training.model_name_or_path, cfg.training.tiny_model, home / "models"))
    rows = load_prompts(cfg.generation.prompts, cfg.generation.max_prompts)
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    runs = {
        "direct transformers generate": lambda r: direct_generate(cfg, rows, model_path),
        "distilabel stage": lambda r: distilabel_stage(cfg, rows, model_path, home / f"stage-{r}"),
    }
    rounds: dict[str, list[dict]] = {name: [] for name in runs}
    for r in range(args.rounds):  # alternating, so both sides see the same background load
        for name, run in runs.items():
            measured, texts = run(r)
            measured["tokens"] = count_tokens(tokenizer, texts)
            for span in ("wall", "generate"):
                measured[f"responses_per_s_{span}"] = round(measured["responses"] / measured[f"{span}_s"], 2)
                measured[f"tokens_per_s_{span}"] = round(measured["tokens"] / measured[f"{span}_s"], 1)
            rounds[name].append({k: round(v, 2) if isinstance(v, float) else v for k, v in measured.items()})
            print(f"round {r} {name}: {rounds[name][-1]}", flush=True)
    # The best round of each side: the machine is shared, and slower rounds measure the neighbours.
    results = {name: min(rs, key=lambda m: m["generate_s"]) for name, rs in rounds.items()}
    direct, stage = results["direct transformers generate"], results["distilabel stage"]
    import torch

    from alignflow.tasks.generation.llms import cpu_threads_each

    torch_threads, stage_threads = torch.get_num_threads(), cpu_threads_each(cfg.generation.generators)
    summary = {
        "model": "builtin:tiny-llama (conf/pipeline.yaml)",
        "overrides": args.overrides,
        "prompts": len(rows),
        "generators": [
            g.model_dump(include={"temperature", "max_new_tokens", "num_generations"})
            for g in cfg.generation.generators
        ],  # fmt: skip
        "input_batch_size": cfg.generation.input_batch_size,
        "rows": results,
        "rounds": rounds,
        "torch_threads": {"direct": torch_threads, "distilabel, per generator process": stage_threads},
        # wall: model loading and start-up included on both sides; generate: the generation phase only
        # (direct: the generate calls; distilabel: first generator batch started to last one finished).
        "ratio_wall": round(stage["responses_per_s_wall"] / direct["responses_per_s_wall"], 3),
        "ratio_generate": round(stage["responses_per_s_generate"] / direct["responses_per_s_generate"], 3),
        "ratio_tokens_generate": round(stage["tokens_per_s_generate"] / direct["tokens_per_s_generate"], 3),
        "target_ratio": 0.8,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU (shared, noisy)",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results_file = RESULTS.with_name(f"{RESULTS.stem}-{args.tag}.json") if args.tag else RESULTS
    results_file.write_text(json.dumps(summary, indent=2))
    print("\n| setup | responses | tokens | wall s | generate s | responses/s (wall) | responses/s (generate) "
          "| tokens/s (generate) |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for name, r in results.items():
        print(f"| {name} | {r['responses']} | {r['tokens']:,} | {r['wall_s']} | {r['generate_s']} "
              f"| {r['responses_per_s_wall']} | {r['responses_per_s_generate']} | {r['tokens_per_s_generate']:,} |")  # fmt: skip
    print(f"\ndistilabel / direct, responses/s: {summary['ratio_generate']} over generation, "
          f"{summary['ratio_wall']} over the whole wall (target >= 0.8). Wrote {results_file}")  # fmt: skip


if __name__ == "__main__":
    main()
