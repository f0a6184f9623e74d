"""Shared pieces of the benchmarks: one system per subprocess, timing summaries, tables.

Each system under test runs in a fresh Python process (`python <script> --system NAME`)
that prints one `RESULT {json}` line, so Ray clusters, thread pools and imports of one
system never warm up or slow down another.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

RESULT_PREFIX = "RESULT "
PROCESS_START = time.perf_counter()


def emit(result: dict[str, Any]) -> None:
    """Print a system's result for the parent process to parse."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def per_round(stamps: Sequence[float], warmup: int) -> list[float]:
    """Seconds of each round after warm-up, from end-of-round timestamps.

    `stamps[r]` is when round r ended (`stamps[0]`: just before round 1 began).
    """
    return [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:], strict=False)]


def summarise(times: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(times), "median": statistics.median(times),
            "min": min(times), "max": max(times), "n": len(times)}


def run_system(script: str, system: str, argv: Sequence[str], timeout: float
               ) -> dict[str, Any]:
    """Run `script --system system argv...` in a fresh process; its RESULT, or an error."""
    command = [sys.executable, script, "--system", system, *argv]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"system": system, "error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - started
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
            result["process_s"] = wall
            return result
    tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
    return {"system": system, "error": f"exit {done.returncode}: " + " | ".join(tail)}


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "n/a"
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
