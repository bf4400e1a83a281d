"""The machine and software a benchmark ran on, recorded with its results."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["machine"]


def machine(libraries: tuple[str, ...] = ()) -> dict[str, Any]:
    cpu = platform.processor()
    memory = 0
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in info.splitlines()
            if line.startswith("model name")
        )
        meminfo = Path("/proc/meminfo").read_text().split()
        memory = int(meminfo[meminfo.index("MemTotal:") + 1]) // 1024
    except (OSError, StopIteration, ValueError):
        pass
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mb": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": {name: metadata.version(name) for name in libraries},
        "commit": head.stdout.strip() + (" with uncommitted changes" if dirty.stdout else ""),
    }
