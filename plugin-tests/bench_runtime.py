"""Benchmark keymgmt reads/lists against OpenBao's built-in transit engine.

Starts a fresh bao on 127.0.0.1 with the plugin at keymgmt/ and transit at transit/,
then reports latency, throughput, plugin start-up time and plugin memory.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from harness import (
    MOUNT,
    BaoServer,
    cli,
    host_plugin_env,
    install_plugin,
    kill_plugins,
    plugin_pids,
    read_handshake,
    spawn_plugin,
    stop_process,
)

KEY = "bench"
CONCURRENCY = (1, 16)
WARMUP = 50
STARTUP_RUNS = 15
# (label, ours, transit) request paths under /v1/.
WORKLOADS = [
    ("read", f"{MOUNT}/key/{KEY}", f"transit/keys/{KEY}"),
    ("list", f"{MOUNT}/key?list=true", "transit/keys?list=true"),
]


@dataclass
class Result:
    p50_ms: float
    p99_ms: float
    rps: float


def run_load(server: BaoServer, path: str, n: int, concurrency: int) -> Result:
    """n GETs of /v1/<path>, spread over `concurrency` persistent connections."""
    barrier = threading.Barrier(concurrency + 1, timeout=60)
    shares = [n // concurrency + (i < n % concurrency) for i in range(concurrency)]

    def worker(count: int) -> list[float]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        headers = {"X-Vault-Token": server.token}
        latencies = []
        try:
            barrier.wait()
            for _ in range(count):
                start = time.perf_counter()
                conn.request("GET", f"/v1/{path}", headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                latencies.append(time.perf_counter() - start)
                if resp.status != 200:
                    raise RuntimeError(f"GET /v1/{path}: {resp.status} {body[:300]!r}")
        finally:
            conn.close()
        return latencies

    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(worker, count) for count in shares]
        barrier.wait()
        start = time.perf_counter()
        latencies = sorted(lat for f in futures for lat in f.result())
        elapsed = time.perf_counter() - start
    return Result(
        p50_ms=statistics.median(latencies) * 1e3,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
        rps=len(latencies) / elapsed,
    )


def startup_times(tmp: Path) -> list[float]:
    """Seconds from spawning the plugin with the host's env to its handshake line."""
    env = host_plugin_env(tmp)
    times = []
    for _ in range(STARTUP_RUNS):
        start = time.perf_counter()
        proc = spawn_plugin(env)
        try:
            read_handshake(proc, timeout=10)
            times.append(time.perf_counter() - start)
        finally:
            stop_process(proc)
            proc.communicate()
    return times


def memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000, help="requests per workload (default 2000)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="keymgmt-bench-") as tmpdir:
        tmp = Path(tmpdir)
        server = BaoServer(tmp / "bao")
        try:
            install_plugin(server)
            cli(server, "secrets", "enable", "transit")
            cli(server, "write", "-f", f"{MOUNT}/key/{KEY}", "type=rsa-2048")
            cli(server, "write", "-f", f"transit/keys/{KEY}", "type=rsa-2048")

            print(f"{'workload':<16}{'conc':>5}{'n':>7}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}")
            ratios = []
            for label, ours, transit in WORKLOADS:
                for concurrency in CONCURRENCY:
                    results = {}
                    for engine, path in (("keymgmt", ours), ("transit", transit)):
                        run_load(server, path, WARMUP, concurrency)
                        r = run_load(server, path, args.n, concurrency)
                        results[engine] = r
                        print(
                            f"{engine + ' ' + label:<16}{concurrency:>5}{args.n:>7}"
                            f"{r.p50_ms:>9.3f}{r.p99_ms:>9.3f}{r.rps:>9.0f}"
                        )
                    k, t = results["keymgmt"], results["transit"]
                    ratios.append(
                        f"{label} c={concurrency}: p50 x{k.p50_ms / t.p50_ms:.2f}, "
                        f"p99 x{k.p99_ms / t.p99_ms:.2f}, req/s x{k.rps / t.rps:.2f}"
                    )
            print("\nratio ours/transit (latency >1 = slower, req/s <1 = slower):")
            for line in ratios:
                print("  " + line)

            pids = plugin_pids(server)
            print(f"\nplugin processes: {len(pids)}")
            for pid in pids:
                mem = memory_kb(pid)
                print(f"  pid {pid}: VmRSS {mem['VmRSS']} kB, VmHWM {mem['VmHWM']} kB")
        finally:
            server.stop()
            kill_plugins(server)

        times = startup_times(tmp)
        print(
            f"\nplugin start-up to handshake ({STARTUP_RUNS} runs): "
            f"median {statistics.median(times) * 1e3:.1f} ms, "
            f"min {min(times) * 1e3:.1f} ms, max {max(times) * 1e3:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
