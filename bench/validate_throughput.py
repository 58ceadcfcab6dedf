"""Validation throughput (rows/s) and peak memory, on synthetic preference data.

    .venv/bin/python bench/validate_throughput.py [--sizes 100000 1000000] [--tokenizer-rows 100000 1000000]
        [--workers 1 2] [--chunk-rows 10000] [--results PATH]

Writes synthetic JSON lines (1% bad rows of several kinds) into a temporary folder,
validates each size in a fresh subprocess (so ru_maxrss is that run's peak), with and
without the tokenizer-based checks (the offline tiny model's BPE tokenizer and chat
template), and writes bench/results/validate_throughput.json plus a table. Targets:
at least 50k rows/s without the tokenizer checks (issue 4), at least 20k rows/s with them
(issue 17); peak memory flat as the file grows (100k vs 1M rows).

The machine is shared: each result records the 1-minute load average before and after the
run, and the run's CPU seconds (user + system), so a figure taken on a busy machine says so.
`--tokens-parallel` lets the tokenizers library use its threads (the state directory's
environment turns them off, as the flow runs with them off). `--workers` runs each case once per
`validation.workers` value given (1: in one process; N: chunks checked in N worker processes),
in the same conditions one after the other; each result records the settings it ran with, and
its CPU seconds and peak memory count the worker processes too. `--results` writes the figures
elsewhere (a busy machine's figures do not belong in bench/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "validate_throughput.json"
WORDS = [
    "the",
    "a",
    "model",
    "answer",
    "question",
    "data",
    "light",
    "water",
    "energy",
    "system",
    "because",
    "when",
    "which",
    "their",
    "about",
    "would",
    "there",
    "could",
    "other",
    "into",
    "more",
    "time",
    "very",
    "first",
    "people",
    "after",
    "years",
    "between",
    "through",
    "during",
]


def synthesize(path: Path, rows: int, fmt: str, seed: int = 0) -> None:
    """Standard-format pairs with ratings; about 1% bad rows (empty, identical, duplicate, tie, null)."""
    rng = random.Random(seed)

    def sentence(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."

    records = []
    with open(path, "w", encoding="utf-8") as out:
        for i in range(rows):
            prompt = f"Question {i // 2}: {sentence(8)}?"
            row = {
                "prompt_id": f"q{i // 2}",
                "prompt": prompt,
                "chosen": sentence(rng.randint(15, 40)),
                "rejected": sentence(rng.randint(10, 40)),
                "score_chosen": round(rng.uniform(0.5, 1.0), 3),
                "score_rejected": round(rng.uniform(0.0, 0.45), 3),
            }
            bad = i % 100
            if bad == 7:
                row["chosen"] = "  "
            elif bad == 17:
                row["rejected"] = row["chosen"] + " "
            elif bad == 27 and records:
                row = dict(records[-1])
            elif bad == 37:
                row["score_rejected"] = row["score_chosen"]
            elif bad == 47:
                row["rejected"] = None
            records = [row]
            if fmt == "jsonl":
                out.write(json.dumps(row) + "\n")
    if fmt == "parquet":
        raise SystemExit("parquet: convert the jsonl first (not needed for the figures)")


def per_row_template(counter, rows, tp: list, tc: list, tr: list, conversations: dict):
    """The token counting validation had before TokenCounter (--baseline): the chat template through
    Jinja for every row, then every templated text tokenized whole."""
    import numpy as np

    if not len(rows):
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=bool)
    convs = []
    for i in rows:
        if i in conversations:
            p, c, r = conversations[i]
            convs += [p + c, p + r]
        else:
            user = {"role": "user", "content": tp[i]}
            convs += [[user, {"role": "assistant", "content": tc[i]}], [user, {"role": "assistant", "content": tr[i]}]]
    texts = counter.tokenizer.apply_chat_template(convs, tokenize=False)
    backend = counter.tokenizer.backend_tokenizer
    counts = (len(e.ids) for e in backend.encode_batch_fast(texts, add_special_tokens=False))
    return np.fromiter(counts, dtype=np.int64, count=len(texts)).reshape(-1, 2), np.zeros(len(rows), dtype=bool)


def worker(path: str, tokenizer_dir: str | None, out_dir: str, workers: str, chunk_rows: int) -> None:
    """One validation in this process; prints its figures as one JSON line."""
    from alignflow.conf.validation import ValidationConfig
    from alignflow.tasks.validation.stage import validate_file

    if os.environ.get("BENCH_BASELINE"):
        from alignflow.tasks.validation import rowchecks

        rowchecks.measure_rows = per_row_template  # worker processes fork from here: they count the same way

    tokenizer = None
    if tokenizer_dir:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    from alignflow.tasks.validation.parallel import resolve_workers

    config = ValidationConfig(workers=workers if workers == "auto" else int(workers), chunk_rows=chunk_rows)
    started = time.perf_counter()
    report = validate_file(path, config, Path(out_dir), tokenizer)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    pool = resource.getrusage(resource.RUSAGE_CHILDREN)  # the worker processes, joined by now
    print(
        json.dumps(
            {
                "rows": report.rows,
                "valid": report.valid,
                "quarantined": report.quarantined,
                "seconds": round(wall, 2),
                "rows_per_s": round(report.rows / wall),
                "cpu_seconds": round(usage.ru_utime + usage.ru_stime + pool.ru_utime + pool.ru_stime, 2),
                "main_cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),  # reads, merges, writes: bounds the gain
                "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
                "worker_peak_rss_mb": round(pool.ru_maxrss / 1024, 1) if pool.ru_maxrss else None,
                "workers": config.workers,
                "workers_used": resolve_workers(config.workers),
                "chunk_rows": config.chunk_rows,
                "gate_passed": report.gate.passed,
                "notes": report.notes,
            }
        )
    )


def main(args: argparse.Namespace) -> None:
    results_path = Path(args.results)
    from alignflow.conf.schema import PipelineConfig
    from alignflow.tasks.runtime.state import configure_environment

    tmp = Path(tempfile.mkdtemp(prefix="alignflow-bench-validate-"))
    configure_environment(PipelineConfig(runtime={"home": tmp / "home"}))
    try:
        from alignflow.tasks.runtime.tiny_model import corpus, train_tokenizer

        tokenizer_dir = tmp / "tokenizer"
        train_tokenizer(corpus(), 2048).save_pretrained(tokenizer_dir)
        runs = [(n, False, w) for n in args.sizes for w in args.workers]
        runs += [(n, True, w) for n in args.tokenizer_rows for w in args.workers]
        results = []
        for rows in sorted({n for n, _, _ in runs}):
            data = tmp / f"pairs-{rows}.jsonl"
            started = time.perf_counter()
            synthesize(data, rows, "jsonl")
            print(
                f"synthesized {rows} rows ({data.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - started:.0f}s"
            )
            for n, with_tokenizer, workers in runs:
                if n != rows:
                    continue
                out = tmp / f"out-{rows}-{with_tokenizer}-{workers}"
                cmd = [sys.executable, __file__, "--worker", str(data), str(out), str(workers), str(args.chunk_rows)]
                if with_tokenizer:
                    cmd.append(str(tokenizer_dir))
                env = os.environ.copy()
                if args.tokens_parallel:
                    env["TOKENIZERS_PARALLELISM"] = "true"
                if args.baseline:
                    env["BENCH_BASELINE"] = "1"
                load_before = round(os.getloadavg()[0], 1)
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode:
                    raise SystemExit(proc.stderr)
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                result.update(
                    file_mib=round(data.stat().st_size / 2**20, 1),
                    tokenizer_checks=with_tokenizer,
                    rows_per_cpu_s=round(result["rows"] / max(result["cpu_seconds"], 1e-9)),
                    load_avg_1m=[load_before, round(os.getloadavg()[0], 1)],
                    tokenizers_parallelism=env.get("TOKENIZERS_PARALLELISM"),
                    token_counting="per-row template, whole texts (baseline)"
                    if with_tokenizer and args.baseline
                    else "TokenCounter"
                    if with_tokenizer
                    else None,
                    measured=time.strftime("%Y-%m-%d %H:%M"),
                )
                results.append(result)
                print(json.dumps(result))
                shutil.rmtree(out, ignore_errors=True)
            data.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # Merge with earlier figures for other sizes (a run replaces only the sizes it measured).
    def key(r: dict) -> tuple:
        return r["rows"], r["tokenizer_checks"], r.get("token_counting"), str(r.get("workers", 1))

    fresh = {key(r) for r in results}
    if results_path.exists():
        earlier = json.loads(results_path.read_text()).get("results", [])
        results = [r for r in earlier if key(r) not in fresh] + results
    results.sort(
        key=lambda r: (r["tokenizer_checks"], str(r.get("token_counting")), r["rows"], str(r.get("workers", 1)))
    )
    summary = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "config": "ValidationConfig() defaults but chunk_rows and workers (each result's), JSON lines input, 1% bad "
        "rows; the tokenizer checks: too_long and double_bos through the tiny model's BPE tokenizer and chat "
        "template (vocab 2048); results without `workers` predate the setting (one process)",
        "results": results,
    }
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"\n{'rows':>9} {'tokenizer':>9} {'workers':>7} {'MiB':>7} {'seconds':>8} {'rows/s':>9} {'rows/cpu-s':>10} "
        f"{'peak MB':>8} load"
    )
    for r in results:
        print(
            f"{r['rows']:>9} {('yes' if r['tokenizer_checks'] else 'no'):>9} {str(r.get('workers', 1)):>7} {r['file_mib']:>7} "
            f"{r['seconds']:>8} {r['rows_per_s']:>9} {r.get('rows_per_cpu_s', '-'):>10} {r['peak_rss_mb']:>8} "
            f"{r.get('load_avg_1m', '-')} {r.get('token_counting') or ''}"
        )
    print(f"\nwritten {results_path}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[6] if len(sys.argv) > 6 else None, sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
        parser.add_argument("--tokenizer-rows", type=int, nargs="*", default=[100_000, 1_000_000])
        parser.add_argument("--tokens-parallel", action="store_true", help="let the tokenizers library use its threads")
        parser.add_argument("--results", default=str(RESULTS), help="the JSON file to merge the figures into")
        parser.add_argument(
            "--workers",
            nargs="*",
            default=["auto"],
            help="validation.workers values to run each case with (1, N, auto)",
        )
        parser.add_argument("--chunk-rows", type=int, default=10000, help="validation.chunk_rows")
        parser.add_argument(
            "--baseline", action="store_true", help="count tokens as before TokenCounter (Jinja per row, whole texts)"
        )
        main(parser.parse_args())
