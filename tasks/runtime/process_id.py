"""Which process drives a run, in a form another process can check later (tasks/registry/orphans.py)."""

from __future__ import annotations

import os
import socket

DRIVER_TAG = "alignflow.driver"  # on every flow's MLflow run


def driver_tag(pid: int | None = None) -> str:
    """host:pid:start-time of a process (this one by default)."""
    import psutil

    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{int(psutil.Process(pid).create_time())}"


def driver_gone(tag: str) -> bool:
    """The process the tag names is on this host and no longer runs (a reused pid does not count as it)."""
    import psutil

    parts = tag.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname():
        return False  # another host (or a tag we did not write): cannot tell
    try:
        pid, started = int(parts[1]), int(parts[2])
        return int(psutil.Process(pid).create_time()) != started
    except psutil.NoSuchProcess:
        return True
    except (ValueError, psutil.Error):
        return False
