"""The GPU benchmark's inference rows (bench/gpu/run.py runs them): the distilabel generate pipeline against
direct `generate`, generation on the GPU (bf16) against the CPU (float32), and the held-out scoring of
tasks/evaluation/metrics.py on the GPU against the CPU.

On a GPU, distilabel_generate runs in a spawned process (ProcessPoolExecutor, spawn context): the child
imports the main script (run.py, which bootstraps the carried wheels) and then this module by its plain name
from the sys.path it inherits (bench/gpu first), to unpickle the function. Nothing heavy is imported at this
module's top, for the same reason as in models.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from models import Bench, build_model, cluster_profile, preference_data, release

DEVICES_ROW = "Generation: a GPU actor's work (bf16) against a CPU actor's (float32), the stage's own LLM"
EVALUATION_ROW = "Evaluation on the GPU: held-out log-prob scoring, GPU bf16 against CPU float32"


# --- the generation row -----------------------------------------------------------------------------


def generation_settings(bench: Bench, model_path: str, prompts: int, new_tokens: int | None):
    """conf/cluster.yaml's generators (samplers, responses per prompt, batch) on `model_path`, first `prompts`."""
    from alignflow.conf.loader import load_config

    cfg = load_config(cluster_profile(bench.home), [f"runtime.home={bench.home}", f"generation.max_prompts={prompts}"])
    update = {"model": model_path, **({"max_new_tokens": new_tokens} if new_tokens else {})}
    generators = [g.model_copy(update=update) for g in cfg.generation.generators]
    return cfg.generation.model_copy(update={"generators": generators}), cfg.runtime.seed


def direct_generate(generation, model_path: str, device: str, dtype: str, seed: int) -> dict:
    """transformers `generate` in this process, generator after generator, with the stage's sampling settings."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from alignflow.tasks.generation.llms import generation_kwargs
    from alignflow.tasks.generation.prompts import load_prompts

    rows = load_prompts(generation.prompts, generation.max_prompts)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device).eval()
    loaded = time.perf_counter()
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                             add_generation_prompt=True) for r in rows]  # fmt: skip
    batch, responses, tokens = generation.input_batch_size, 0, 0
    for i, gen in enumerate(generation.generators):
        set_seed(seed + i)
        for start in range(0, len(prompts), batch):
            enc = tokenizer(prompts[start : start + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                out = model.generate(**enc.to(device), **generation_kwargs(gen), top_k=0,  # top_k=0: as distilabel
                                     num_return_sequences=gen.num_generations, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
            new = out[:, enc["input_ids"].shape[1] :]
            responses, tokens = responses + new.shape[0], tokens + int((new != tokenizer.pad_token_id).sum())
    done = time.perf_counter()
    del model
    release()
    return {"responses": responses, "tokens": tokens, "wall_s": round(done - started, 2),
            "generate_s": round(done - loaded, 2)}  # fmt: skip


def distilabel_generate(generation_json: str, model_path: str, cache: str, seed: int) -> dict:
    """The generate stage's distilabel pipeline (tasks/generation/pipeline.build_pipeline: load >> one process per
    generator >> candidates >> judge) as configured: generation.resources {GPU: 1} loads its local models on the GPU
    in bf16. Local processes (generation.ray false): Ray is not carried (bench/gpu/kit.py). On a GPU it runs in a
    spawned process, as the stage does: a process that has used CUDA cannot fork children that use it."""
    import multiprocessing

    from alignflow.conf.generation import GenerationConfig
    from alignflow.tasks.generation import pipeline
    from alignflow.tasks.generation.prompts import load_prompts

    started = time.perf_counter()
    generation = GenerationConfig.model_validate_json(generation_json)
    multiprocessing.current_process().name = "MainProcess"  # distilabel collects step logs only there
    rows = [{**r, "row": i} for i, r in enumerate(load_prompts(generation.prompts, generation.max_prompts))]
    paths = [model_path] * len(generation.generators)
    table = pipeline.build_pipeline(rows, generation, paths, Path(cache), seed).run(use_cache=False)
    table = table["default"]["train"]
    phase = max(table["generation_finished"]) - min(table["generation_started"])
    return {"responses": sum(len(c) for c in table["candidates"]), "tokens": int(sum(table["output_tokens"])),
            "wall_s": round(time.perf_counter() - started, 2), "generate_s": round(phase, 2)}  # fmt: skip


def local_processes(generation, use_gpu: bool):
    """`generation` on this machine's processes, its local models on the GPU (bf16) or the CPU (float32)."""
    return generation.model_copy(update={"ray": False, "resources": {"GPU": 1} if use_gpu else None})


def generation_row(bench: Bench, shape: dict, prompts: int, new_tokens: int | None) -> dict:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    dtype = "float32" if bench.smoke else "bfloat16"
    path = build_model(bench.home / "qwen2-generate", shape, bench.tokenizer, bench.device, dtype, ascii_only=True)
    generation, seed = generation_settings(bench, path, prompts, new_tokens)
    direct = direct_generate(generation, path, bench.device, dtype, seed)
    staged = local_processes(generation, use_gpu=not bench.smoke)
    args = (staged.model_dump_json(), path, str(bench.home / "distilabel"), seed)
    if bench.smoke:  # CPU: distilabel may fork this process; a spawned one would re-import everything per step
        stage = distilabel_generate(*args)
    else:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            stage = pool.submit(distilabel_generate, *args).result()
    for side in (direct, stage):
        for span in ("wall", "generate"):
            side[f"responses_per_s_{span}"] = round(side["responses"] / side[f"{span}_s"], 2)
            side[f"tokens_per_s_{span}"] = round(side["tokens"] / side[f"{span}_s"], 1)
    return {
        "model": "Qwen2.5-0.5B shape, random weights" if not bench.smoke else "tiny Qwen2 shape (smoke)",
        "prompts": prompts, "generators": [g.model_dump(include={"temperature", "max_new_tokens", "num_generations"})
                                           for g in generation.generators],
        "input_batch_size": generation.input_batch_size,
        "direct transformers generate": direct, "distilabel pipeline": stage,
        "ratio_generate": round(stage["responses_per_s_generate"] / direct["responses_per_s_generate"], 3),
        "ratio_wall": round(stage["responses_per_s_wall"] / direct["responses_per_s_wall"], 3),
    }  # fmt: skip


# --- issue 27's rows: generation and evaluation by device ----------------------------------------------


def actor_generate(generation, model_path: str, use_gpu: bool, seed: int) -> dict:
    """A generator actor's work, in this process: the stage's own LLM (tasks/generation/llms.build_llm, as the actor
    builds it from generation.resources) loaded, then every batch through distilabel's generate_outputs."""
    from alignflow.tasks.generation.llms import build_llm
    from alignflow.tasks.generation.prompts import load_prompts

    rows = load_prompts(generation.prompts, generation.max_prompts)
    chats = [[{"role": "user", "content": r["prompt"]}] for r in rows]
    started = time.perf_counter()
    batch, responses, tokens, generate_s, where = generation.input_batch_size, 0, 0, 0.0, {}
    for i, gen in enumerate(generation.generators):
        llm = build_llm(gen, f"generation.generators.{i}", model_path, seed + i, batch, use_gpu=use_gpu)
        llm.load()
        where, loaded = llm.where, time.perf_counter()
        for start in range(0, len(chats), batch):
            outputs = llm.generate_outputs(chats[start : start + batch], gen.num_generations, **llm.generation_kwargs)
            responses += sum(len(o["generations"]) for o in outputs)
            tokens += sum(sum(o["statistics"]["output_tokens"]) for o in outputs)
        generate_s += time.perf_counter() - loaded  # the batches alone, as a loaded actor spends its time
        llm.unload()
    wall_s = time.perf_counter() - started
    release()
    return {"responses": responses, "tokens": tokens, "wall_s": round(wall_s, 2), "generate_s": round(generate_s, 2),
            "placement": where}  # fmt: skip


def devices_row(bench: Bench, shape: dict, prompts: int, new_tokens: int | None) -> dict:
    """A generator actor's work (actor_generate) with generation.resources {GPU: 1} (bf16 on the GPU) against a CPU
    actor's (float32); Ray is not carried (bench/gpu/kit.py), so both are this process. The CPU side answers an
    eighth of the prompts (at least 2): tokens/s is the comparable figure."""
    path = build_model(bench.home / "qwen2-devices", shape, bench.tokenizer, "cpu", "float32", ascii_only=True)
    sides = {}
    for use_gpu, count in ((True, prompts), (False, max(2, prompts // 8))):
        if use_gpu and bench.smoke:
            continue
        generation, seed = generation_settings(bench, path, count, new_tokens)
        side = actor_generate(generation, path, use_gpu, seed)
        side["tokens_per_s_generate"] = round(side["tokens"] / side["generate_s"], 1)
        sides["gpu actor" if use_gpu else "cpu actor"] = {**side, "prompts": count}
    ratio = None
    if len(sides) == 2:
        ratio = round(sides["gpu actor"]["tokens_per_s_generate"] / sides["cpu actor"]["tokens_per_s_generate"], 1)
    return {"model": "Qwen2.5-0.5B shape, random weights" if not bench.smoke else "tiny Qwen2 shape (smoke)",
            "sides": sides, "gpu_over_cpu_tokens_per_s": ratio}  # fmt: skip


def evaluation_row(bench: Bench, shape: dict, pairs: int) -> dict:
    """tasks/evaluation/metrics.score_model (the held-out metrics' log-probs of chosen and rejected) on `pairs` pairs:
    the model on the GPU in bf16 against the CPU in float32, and how far the two sets of log-probs are apart."""
    import torch
    from transformers import AutoTokenizer

    from alignflow.tasks.evaluation.metrics import load_causal_lm, score_model

    path = build_model(bench.home / "qwen2-evaluate", shape, bench.tokenizer, "cpu", "float32")
    frame = preference_data(pairs, 256).to_pandas()
    out = {"pairs": pairs, "seq": 256}
    scores = {}
    for device, dtype in (("cpu", torch.float32), ("cuda", torch.bfloat16)):
        if device == "cuda" and bench.smoke:
            continue
        model, tokenizer = load_causal_lm(path)
        model = model.to(device=device, dtype=dtype)
        tokenizer = tokenizer if tokenizer.chat_template else AutoTokenizer.from_pretrained(path)
        started = time.perf_counter()
        scores[device] = score_model(model, tokenizer, frame, batch_size=16)
        if device == "cuda":
            torch.cuda.synchronize()
        out[f"{device}_s"] = round(time.perf_counter() - started, 2)
        out[f"{device}_pairs_per_s"] = round(pairs / out[f"{device}_s"], 1)
        del model
        release()
    if "cuda" in scores:
        out["max_abs_logp_difference"] = float((scores["cuda"] - scores["cpu"]).abs().max().max())
        out["gpu_speedup"] = round(out["cpu_s"] / out["cuda_s"], 1)
    return out
