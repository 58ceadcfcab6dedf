"""Detached service processes: start one with a log and a record, wait for it to answer, stop it and its tree.

The stack (flows/ops/stack.py) outlives the command that started it, so each process runs in a session of its
own and is recorded in `pids.json` under the stack's folder the moment it starts: `stack down` (or a
failed `stack up`) stops exactly the processes it started, by id, and everything below them.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

HOST = "127.0.0.1"


def records(root: Path) -> list[dict]:
    file = root / "pids.json"
    return json.loads(file.read_text()) if file.exists() else []


def _save(root: Path, found: list[dict]) -> None:
    (root / "pids.json").write_text(json.dumps(found, indent=1))


def spawn(name: str, args: list[str], env: dict[str, str], root: Path, leaves: tuple[str, ...] = ()) -> dict:
    """A detached child in a session of its own (so `stack up` may exit), logging to root/logs/NAME.log;
    recorded in root/pids.json before anything waits on it. `leaves`: files it makes outside root (sockets
    at hard-coded paths), removed when it is stopped."""
    log = root / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=root,
            start_new_session=True,
        )
    record = {"name": name, "pid": proc.pid, "log": str(log), "leaves": list(leaves)}
    _save(root, [*(r for r in records(root) if r["name"] != name), record])
    return record


def forget(root: Path, names: list[str]) -> None:
    _save(root, [r for r in records(root) if r["name"] not in names])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    """Every process below pid: Ray's workers leave their parent's process group, not its tree."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(stat) as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def terminate(record: dict, grace: float = 15.0) -> None:
    """SIGTERM the record's process group and every descendant; SIGKILL whatever is left after `grace`."""
    pid = record["pid"]
    targets = [pid, *descendants(pid)]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    for target in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(t) for t in targets):
        time.sleep(0.2)
    for target in [*targets, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    for leftover in record.get("leaves", []):
        Path(leftover).unlink(missing_ok=True)


def tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def wait_for(check: Callable[[], bool], what: str, record: dict | None, timeout: float) -> None:
    """Until `check()` is true (its exceptions count as not yet); fails early when the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if record and not alive(record["pid"]):
            raise RuntimeError(f"{what} exited; see {record['log']}:\n{tail(Path(record['log']))}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.5)
    log = f"; see {record['log']}:\n{tail(Path(record['log']))}" if record else ""
    raise TimeoutError(f"{what} did not answer within {timeout:.0f}s{log}")


def http_status(url: str, headers: dict[str, str] | None = None, timeout: float = 3.0) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def port_free(port: int, host: str = HOST) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) != 0


def free_ports(count: int) -> list[int]:
    """Ports free now whose +10000 is free too (SeaweedFS's default gRPC port for each)."""
    found: list[int] = []
    while len(found) < count:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port < 55000 and port not in found and port_free(port + 10000):
            found.append(port)
    return found


def run_checked(args: list[str], what: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
