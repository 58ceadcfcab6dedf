"""The GPU kit: the wheels the GPU machine's image lacks, and the device commands that carry them.

    .venv/bin/python bench/gpu/kit.py lock       # resolve what the image lacks -> bench/gpu/wheels.lock (PyPI)
    make gpu-kit                                 # download the lock into .gpu-kit/wheels, print the commands
    .venv/bin/python bench/gpu/kit.py commands   # print them again (sizes from .gpu-kit, else from the lock)

The GPU machine (Python 3.12, torch 2.11 with CUDA, transformers 5.17, ...) has no network. Each
command there sends the working tree plus the paths named in `carry`, 64 MiB in all, and its
command line is at most 2,000 characters. The kit carries only what the image lacks
(bench/gpu/image.txt): trl, datasets, distilabel, liger-kernel and their missing dependencies, plus
the versions the project pins where the image's differ (OVERRIDES: transformers 5.17 has no
`activation_checkpointing` training argument, which alignflow's TRL config sets).

Ray is not carried: its wheel alone is over 64 MiB, so it would need two commands back to back
while the machine stays warm (30 s idle), and a Ray Train worker runs the same training loop as
a plain process. Ray's overhead is measured on CPU only (bench/train_throughput.py: 1.006 of plain
TRL's tokens/s; its cost is start-up), and the GPU matrix measures the loop itself. `plan` still
splits a kit over several commands if one ever outgrows a single command.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KIT = ROOT / ".gpu-kit"
WHEELS = KIT / "wheels"
LOCK = HERE / "wheels.lock"
IMAGE = HERE / "image.txt"
CONSTRAINTS = ROOT / "constraints.txt"

LIMIT_BYTES = 64 * 2**20  # the working tree plus the carried paths, per command
COMMAND_CHARS = 2000
# One device call of at most 8 minutes (issue 27): the runner starts no row after --budget-s (each row declares
# the time it needs to start, bench/gpu/run.py), so the last one ends before the call's limit.
RUN_TIMEOUT_S = 480
BUDGET_S = 400

# What the GPU matrix needs that the image lacks; versions as the project pins them.
ROOTS = ["trl==1.16.0", "datasets==5.2.0", "distilabel==1.5.3", "liger-kernel==0.8.5", "pydantic==2.14.3"]
# In the image, but carried ahead of the image's copy on sys.path: transformers and peft at the versions the
# project pins (the image's transformers 5.17 lacks TrainingArguments.activation_checkpointing); typing-extensions
# because pydantic-core needs >= 4.16 and the image's version is not known (a newer one is backward compatible).
OVERRIDES = {"transformers": "5.23.0", "peft": "0.21.2", "typing-extensions": "4.16.0"}
NOT_CARRIED = {
    "ray": "its wheel alone is over 64 MiB; Ray's overhead is measured on CPU (bench/train_throughput.py)",
    "mlflow": "the benchmark logs nothing to MLflow",
    "prefect": "the benchmark runs no flow",
}
PLATFORM_ARGS = [
    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
    "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
    "--platform", "manylinux_2_27_x86_64", "--platform", "manylinux_2_28_x86_64",
]  # fmt: skip
MARKER_ENV = {
    "python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
    "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
    "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": "",
}  # fmt: skip


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """name -> version (None where only the name is listed) from a requirements-style file."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalize(name)] = version.split()[0] if version else ""
    return pins


# --- the lock: resolve what the image lacks --------------------------------------------------------


def _download(spec: str, into: Path) -> Path:
    before = set(into.iterdir())
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *PLATFORM_ARGS, "-d", str(into), spec],
                   check=True)  # fmt: skip
    new = sorted(set(into.iterdir()) - before)
    if len(new) != 1:
        raise RuntimeError(f"pip download {spec}: expected one new wheel, got {[p.name for p in new]}")
    return new[0]


def _requirements(wheel: Path) -> list:
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(meta).decode().splitlines()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(MARKER_ENV)]


def resolve() -> tuple[list[dict], list[str]]:
    """Walk the roots' requirements, stopping at what the image has: the wheels to carry, and notes
    on each requirement the image meets (checked here where its version is known, on the machine else)."""
    from packaging.requirements import Requirement

    image, pins = read_pins(IMAGE), read_pins(CONSTRAINTS)
    queue = [Requirement(r) for r in ROOTS] + [Requirement(f"{n}=={v}") for n, v in OVERRIDES.items()]
    carried: dict[str, dict] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        while queue:
            req = queue.pop(0)
            name = normalize(req.name)
            if name in carried:
                if not req.specifier.contains(carried[name]["version"], prereleases=True):
                    raise RuntimeError(f"{req} conflicts with the carried {name}=={carried[name]['version']}")
                continue
            if name in image and name not in OVERRIDES:
                known = image[name]
                ok = "unknown version, checked on the machine" if not known else (
                    "ok" if req.specifier.contains(known, prereleases=True) else "CONFLICT")  # fmt: skip
                notes.append(f"{req} <- image {name}{'==' + known if known else ''}: {ok}")
                if ok == "CONFLICT":
                    raise RuntimeError(f"the image's {name}=={known} does not meet {req}: add it to OVERRIDES")
                continue
            pin = pins.get(name)
            spec = f"{req.name}=={pin}" if pin and req.specifier.contains(pin, prereleases=True) else str(req)
            wheel = _download(spec.split(";")[0], Path(tmp))
            version = wheel.name.split("-")[1]
            carried[name] = {"name": name, "version": version, "file": wheel.name, "size": wheel.stat().st_size,
                             "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()}  # fmt: skip
            queue += _requirements(wheel)
    return sorted(carried.values(), key=lambda w: w["name"]), sorted(set(notes))


def write_lock(wheels: list[dict], notes: list[str], path: Path = LOCK) -> None:
    lines = [
        "# What the GPU machine's image lacks (Python 3.12, manylinux x86_64): written by `bench/gpu/kit.py lock`,",
        "# downloaded by `make gpu-kit` (pip download --no-deps --require-hashes -r this file). Sizes in bytes.",
        *(f"{w['name']}=={w['version']} --hash=sha256:{w['sha256']}  # size={w['size']} file={w['file']}" for w in wheels),
        "#",
        "# Requirements the image meets:",
        *(f"#   {n}" for n in notes),
        "# Not carried:",
        *(f"#   {n}: {why}" for n, why in NOT_CARRIED.items()),
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


def read_lock(path: Path = LOCK) -> list[dict]:
    wheels = []
    for line in path.read_text().splitlines():
        m = re.match(r"^(\S+)==(\S+) .*# size=(\d+) file=(\S+)$", line)
        if m:
            wheels.append({"name": m[1], "version": m[2], "size": int(m[3]), "file": m[4]})
    return wheels


# --- the commands ----------------------------------------------------------------------------------


@dataclass
class Command:
    """One call of the device tool: its command line, the paths it carries, and what travels."""

    purpose: str
    command: str
    carry: list[str]
    carried_bytes: int
    tree_bytes: int
    timeout_s: int
    wheels: list[str] = field(default_factory=list)

    @property
    def travel_bytes(self) -> int:
        return self.carried_bytes + self.tree_bytes

    def problems(self) -> list[str]:
        out = []
        if len(self.command) >= COMMAND_CHARS:
            out.append(f"command is {len(self.command)} characters (limit {COMMAND_CHARS})")
        if self.travel_bytes >= LIMIT_BYTES:
            out.append(f"{self.travel_bytes / 2**20:.1f} MiB travels (limit {LIMIT_BYTES / 2**20:.0f} MiB)")
        return out


STAGED = "/tmp/alignflow-gpu-kit"  # on the machine: wheels an earlier command of the same window left


def runner_command(kits: list[str], budget_s: int = BUDGET_S) -> str:
    kit_args = " ".join(f"--kit {k}" for k in kits)
    return (f'set -o pipefail; PYTHONUNBUFFERED=1 python3 bench/gpu/run.py {kit_args} --out "$OUT" '
            f'--budget-s {budget_s} 2>&1 | tee "$OUT/log.txt"')  # fmt: skip


def plan(wheels: list[tuple[str, int]], tree_bytes: int, kit_dir: str = ".gpu-kit") -> list[Command]:
    """The device commands that carry `wheels` (file name, bytes): one if they fit beside the working tree,
    else the fewest parts (largest first); the earlier parts only stage their wheels on the machine, and the
    last runs the benchmark, so they must follow each other while the machine is warm."""
    room = LIMIT_BYTES - tree_bytes - 2**20  # a MiB of slack for files that appear in the tree meanwhile
    too_big = [(n, s) for n, s in wheels if s > room]
    if too_big:
        raise ValueError(f"wheels larger than one command can carry ({room / 2**20:.1f} MiB): {too_big}")
    parts: list[list[tuple[str, int]]] = []
    for wheel in sorted(wheels, key=lambda w: -w[1]):
        part = next((p for p in parts if sum(s for _, s in p) + wheel[1] <= room), None)
        if part is None:
            parts.append(part := [])
        part.append(wheel)
    if len(parts) <= 1:
        size = sum(s for _, s in wheels)
        return [Command("install the kit, smoke test, benchmark matrix (results in $OUT)",
                        runner_command([f"{kit_dir}/wheels"]), [f"{kit_dir}/wheels"], size, tree_bytes, RUN_TIMEOUT_S,
                        [n for n, _ in wheels])]  # fmt: skip
    commands = []
    for i, part in enumerate(parts[:-1], 1):
        folder = f"{kit_dir}/part-{i}"
        commands.append(Command(f"stage kit part {i} of {len(parts)} on the machine (send the next at once)",
                                f"mkdir -p {STAGED} && cp {folder}/*.whl {STAGED}/ && ls {STAGED} | wc -l",
                                [folder], sum(s for _, s in part), tree_bytes, 60, [n for n, _ in part]))  # fmt: skip
    folder = f"{kit_dir}/part-{len(parts)}"
    commands.append(Command(f"kit part {len(parts)} of {len(parts)}, then the smoke test and the matrix",
                            runner_command([folder, STAGED]), [folder], sum(s for _, s in parts[-1]), tree_bytes,
                            RUN_TIMEOUT_S, [n for n, _ in parts[-1]]))  # fmt: skip
    return commands


def tree_bytes(root: Path = ROOT) -> int:
    """What travels with every command besides `carry`: tracked and untracked-not-ignored files, and shared/."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                            capture_output=True).stdout.decode().split("\0")  # fmt: skip
    files = [root / f for f in listed if f]
    shared = root / "shared"
    if shared.is_dir():
        files += [p for p in shared.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in set(files) if p.is_file() and not p.is_symlink())


def kit_wheels(kit: Path = KIT) -> list[tuple[str, int]]:
    """The lock's wheels with their sizes: the downloaded files where present, else the lock's sizes."""
    out = []
    for w in read_lock():
        path = kit / "wheels" / w["file"]
        out.append((w["file"], path.stat().st_size if path.exists() else w["size"]))
    return out


def lay_out(commands: list[Command], kit: Path = KIT) -> None:
    """Where the kit is split, hard-link each part's wheels into the folder that command carries."""
    if len(commands) == 1:
        return
    for command in commands:
        folder = ROOT / command.carry[0]
        folder.mkdir(parents=True, exist_ok=True)
        for name in command.wheels:
            if not (folder / name).exists():
                (folder / name).hardlink_to(kit / "wheels" / name)


def prune(kit: Path = KIT) -> list[str]:
    """Remove downloaded wheels the lock no longer names (two versions of one package stop the install)."""
    wanted = {w["file"] for w in read_lock()}
    stale = [p for p in (kit / "wheels").glob("*.whl") if p.name not in wanted]
    for p in stale:
        p.unlink()
    return [p.name for p in stale]


def describe(commands: list[Command]) -> str:
    lines = [f"GPU kit: {len(commands)} command(s) for the device tool, in this order (timeout_s each as given)."]
    for i, c in enumerate(commands, 1):
        lines += [
            f"\ncommand {i} of {len(commands)}: {c.purpose}",
            f"  command:   {c.command}",
            f"  carry:     {json.dumps(c.carry)}",
            f"  timeout_s: {c.timeout_s}",
            f"  sizes:     command line {len(c.command)} chars (limit {COMMAND_CHARS}); carried "
            f"{c.carried_bytes / 2**20:.1f} MiB ({len(c.wheels)} wheels) + working tree {c.tree_bytes / 2**20:.1f} MiB"
            f" = {c.travel_bytes / 2**20:.1f} MiB (limit {LIMIT_BYTES / 2**20:.0f} MiB)",
        ]
        lines += [f"  PROBLEM:   {p}" for p in c.problems()]
        if "bench/gpu/run.py" in c.command:
            lines.append(f"  rows:      in this order, none started after {BUDGET_S} s (smoke test first):")
            lines += [f"             - {label}" for label in matrix_labels()]
    return "\n".join(lines)


def matrix_labels() -> list[str]:
    """The runner's rows (bench/gpu/run.py MATRIX), read from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_run", HERE / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.matrix_labels()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["lock", "commands"])
    args = parser.parse_args()
    if args.action == "lock":
        wheels, notes = resolve()
        write_lock(wheels, notes)
        print(f"{len(wheels)} wheels, {sum(w['size'] for w in wheels) / 2**20:.1f} MiB -> {LOCK.relative_to(ROOT)}")
        return
    missing = [w["file"] for w in read_lock() if not (WHEELS / w["file"]).exists()]
    if (KIT / "wheels").is_dir():
        stale = prune()
        if stale:
            print(f"removed wheels the lock no longer names: {stale}")
    commands = plan(kit_wheels(), tree_bytes())
    lay_out(commands)
    print(describe(commands))
    if missing:
        print(f"\nnot downloaded yet (sizes from the lock): {missing}; run `make gpu-kit`")
    if any(c.problems() for c in commands):
        sys.exit(1)


if __name__ == "__main__":
    main()
