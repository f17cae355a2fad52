"""What the benchmarks (plugin-tests/bench_*.py, run by scripts/bench-*) share."""

from __future__ import annotations

import re
import sys
import time
from typing import Any

import requests

from harness import BaoServer

# The fields of the plugin's per-import log line (`<provider>: imported version ...`).
IMPORT_FIELDS = re.compile(r"\b(key|api_us|token_us|wrap_us|total_us)=(\S+)")


def log(msg: str) -> None:
    """Progress goes to stderr; the tables own stdout."""
    print(msg, file=sys.stderr, flush=True)


def timed_post(s: requests.Session, url: str, body: dict[str, Any], timeout: float = 600) -> float:
    """Seconds one POST took; a failed one raises with the answer's start."""
    t0 = time.perf_counter()
    resp = s.post(url, json=body, timeout=timeout)
    elapsed = time.perf_counter() - t0
    if resp.status_code not in (200, 204):
        raise RuntimeError(f"POST {url} -> {resp.status_code}: {resp.text[:300]}")
    return elapsed


def imports_in_log(server: BaoServer, line: re.Pattern[str], names: list[str]) -> list[dict[str, str]]:
    """The per-import log lines matching `line` of the keys `names`, as field dicts."""
    found = [dict(IMPORT_FIELDS.findall(match)) for match in line.findall(server.log_text())]
    return [i for i in found if any(i.get("key", "").strip('"').startswith(n + "-") for n in names)]
