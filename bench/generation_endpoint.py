"""Generation against endpoints: requests/s of the generate stage, against prompts and against concurrency.

    .venv/bin/python bench/generation_endpoint.py                  # every case (about 15 min on 2 cores)
    .venv/bin/python bench/generation_endpoint.py --quick          # 200 and 2,000 prompts, one latency case
    .venv/bin/python bench/generation_endpoint.py --prompts 2000 --latency 0

The whole generate stage (tasks/generation/stage.generate_preferences: the pipeline's process,
a distilabel step process per LLM, binarization, the files) with two OpenAI-compatible
generators and an UltraFeedback judge, three requests per prompt, against the project's own
test server (tests/fake_openai_server.py) run in a process of its own:

  - instant: the server answers at once; 200, 2,000 and 20,000 prompts at the default
    generation.max_concurrency (64). Target: >= 100 requests/s at 2,000 prompts or more, peak
    memory at 20,000 within 20% of 2,000. Then a re-run over the same prompts: zero requests.
  - latency: every answer takes 0.5 s; generation.max_concurrency 16, 32, 64 and 128, each with
    the prompts that take two minutes at the bound (1,280 to 10,240 prompts): a steady state,
    where the stage's start-up (about 6 s) weighs 5%. The bound is
    concurrency / latency; target >= 80% of it over the stage's wall time.
  - overloaded: 0.1 s per answer, the server takes 24 at once and answers 429 (Retry-After
    0.5 s) past that, the stage allows 64: how many 429s, and whether every row still succeeds.

requests/s = the server's answered requests / the stage's wall time (start-up included).
Memory: the peak of the summed RSS of the stage's processes (this one, the pipeline's, the
step processes), sampled every 0.2 s; the server's is left out. CPU split: CPU seconds of
each kind of process over the run (where the time goes).

Results: bench/results/generation_endpoint.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fake_openai_server import API_KEY, KEY_VARIABLE, endpoint  # noqa: E402

from alignflow.conf.loader import load_config  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "generation_endpoint.json"
TARGET_RPS = 100
TARGET_LATENCY_SHARE = 0.8


class Server:
    """tests/fake_openai_server.py in a process of its own (its CPU is not the stage's)."""

    def __init__(self, latency: float = 0.0, capacity: int | None = None, retry_after: float = 1.0) -> None:
        cmd = [sys.executable, str(ROOT / "tests" / "fake_openai_server.py"), "--latency", str(latency)]
        cmd += ["--retry-after", str(retry_after)] + (["--capacity", str(capacity)] if capacity else [])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()  # type: ignore[union-attr]

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=10) as answer:
            return json.load(answer)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


class ProcessWatch:
    """Peak summed RSS of this process and its descendants (the server excluded), and CPU seconds by kind."""

    def __init__(self, exclude: int) -> None:
        import psutil

        self.me, self.exclude = psutil.Process(), exclude
        self.peak_rss = 0
        self.cpu: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            rss = 0
            for proc in [self.me, *self.me.children(recursive=True)]:
                if proc.pid == self.exclude:
                    continue
                try:
                    rss += proc.memory_info().rss
                    times = proc.cpu_times()
                    self.cpu[proc.pid] = (self._kind(proc), times.user + times.system)
                except psutil.Error:  # ended between listing and reading
                    continue
            self.peak_rss = max(self.peak_rss, rss)

    def _kind(self, proc) -> str:
        if proc.pid == self.me.pid:
            return "this process (imports, config, binarization, files)"
        cmdline = " ".join(proc.cmdline())
        if "_worker_main" in cmdline:
            return "pipeline main loop"
        try:
            parent = " ".join(proc.parent().cmdline())
        except Exception:  # noqa: BLE001 (the parent ended)
            parent = ""
        if "forkserver" in parent:  # forked from the fork server: one per distilabel step
            return "step processes"
        if "forkserver" in cmdline:
            return "fork server"
        return "other"

    def cpu_split(self) -> dict[str, float]:
        split: dict[str, float] = {}
        for kind, seconds in self.cpu.values():
            split[kind] = round(split.get(kind, 0.0) + seconds, 1)
        return split


def config(url: str, prompts: int, concurrency: int):
    return load_config(
        None,
        [
            f"generation.generators=[{endpoint(url, 'alpha')}, {endpoint(url, 'gamma')}]",
            f"generation.judge={{kind: ultrafeedback, llm: {endpoint(url, 'judge-m', temperature=0.0)}}}",
            f"generation.max_concurrency={concurrency}",
            f"generation.max_prompts={prompts}",
        ],
    )


def prompt_rows(n: int) -> list[dict]:
    return [
        {"id": f"p{i}", "prompt": f"Question {i}: why does topic {i % 997} matter?", "reference": ""} for i in range(n)
    ]


def run_case(name: str, prompts: int, concurrency: int, out: Path, rerun: bool = False, **server: float) -> dict:
    from alignflow.tasks.generation.stage import generate_preferences

    srv = Server(**server)  # type: ignore[arg-type]
    try:
        cfg = config(srv.url, prompts, concurrency)
        rows = prompt_rows(prompts)
        with ProcessWatch(exclude=srv.proc.pid) as watch:
            started = time.perf_counter()
            _, report = generate_preferences(rows, cfg.generation, [], out)
            wall = time.perf_counter() - started
        stats = srv.stats()
        result = {
            "case": name,
            "prompts": prompts,
            "max_concurrency": concurrency,
            "latency_s": server.get("latency", 0.0),
            "requests": stats["requests"],
            "by_kind_status": stats["by_kind_status"],
            "server_peak_in_flight": stats["peak_in_flight"],
            "wall_s": round(wall, 2),
            "requests_per_s": round(stats["requests"] / wall, 1),
            "generation_phase_s": report.generation_phase_s,
            "judged": report.judged,
            "failed": report.failed,
            "peak_rss_mb": round(watch.peak_rss / 2**20, 1),
            "cpu_s": watch.cpu_split(),
        }
        if server.get("latency") and not server.get("capacity"):
            bound = concurrency / server["latency"]
            result["bound_requests_per_s"] = bound
            result["share_of_bound"] = round(stats["requests"] / wall / bound, 3)
        if rerun:
            before = srv.stats()["requests"]
            started = time.perf_counter()
            _, again = generate_preferences(rows, cfg.generation, [], out)
            result["rerun"] = {
                "requests": srv.stats()["requests"] - before,
                "reused_rows": again.reused_rows,
                "wall_s": round(time.perf_counter() - started, 2),
            }
        print(json.dumps(result), flush=True)
        return result
    finally:
        srv.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 and 2,000 prompts, and concurrency 64 at 0.5 s")
    parser.add_argument("--prompts", type=int, nargs="*", default=None, help="instant-server sizes")
    parser.add_argument("--concurrency", type=int, nargs="*", default=None, help="latency-case limits")
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=120.0,
        help="each latency case gets the prompts that take this long at the bound (3 requests a prompt)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only, leave the results file alone")
    args = parser.parse_args()
    os.environ[KEY_VARIABLE] = API_KEY
    os.environ.setdefault("TQDM_DISABLE", "1")
    home = Path(tempfile.mkdtemp(prefix="alignflow-endpoint-bench-"))
    sizes = args.prompts if args.prompts is not None else ([200, 2000] if args.quick else [200, 2000, 20000])
    limits = args.concurrency if args.concurrency is not None else ([64] if args.quick else [16, 32, 64, 128])

    results = []
    for n in sizes:
        results.append(run_case("instant", n, 64, home / f"instant-{n}", rerun=n == 2000))
    for c in limits:  # sized by the bound, so that start-up (about 5 s) weighs the same in every case
        prompts = round(args.latency_seconds * c / 0.5 / 3)
        results.append(run_case("latency 0.5 s", prompts, c, home / f"latency-{c}", latency=0.5))
    if not args.quick:
        results.append(run_case("overloaded", 600, 64, home / "overloaded", latency=0.1, capacity=24, retry_after=0.5))

    by_size = {r["prompts"]: r for r in results if r["case"] == "instant"}
    memory = None
    if 2000 in by_size and 20000 in by_size:
        memory = round(by_size[20000]["peak_rss_mb"] / by_size[2000]["peak_rss_mb"], 3)
    summary = {
        "setup": "2 openai generators + an UltraFeedback judge (3 requests per prompt), test server in its own "
        "process; requests/s over the stage's wall time, start-up included",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}",
        "measured": time.strftime("%Y-%m-%d %H:%M"),
        "targets": {"requests_per_s_instant": TARGET_RPS, "share_of_latency_bound": TARGET_LATENCY_SHARE},
        "memory_20k_over_2k": memory,
        "results": results,
    }
    if not args.no_write:
        RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print("\n| case | prompts | max_concurrency | requests | wall s | requests/s | of bound | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        share = f"{r['share_of_bound']:.0%}" if "share_of_bound" in r else ""
        print(
            f"| {r['case']} | {r['prompts']:,} | {r['max_concurrency']} | {r['requests']:,} | {r['wall_s']} "
            f"| {r['requests_per_s']} | {share} | {r['peak_rss_mb']} |"
        )
    if memory is not None:
        print(f"\npeak memory, 20,000 / 2,000 prompts: {memory}")


if __name__ == "__main__":
    main()
