"""Key-creation and LIST latency: keymgmt (this plugin) against OpenBao's transit.

Run through scripts/bench-keys. One fresh dev server on 127.0.0.1 holds both
engines, so both see the same host, storage and load; creations alternate
between the engines so that drift in machine load hits both alike.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

from benchlib import timed_post
from harness import MOUNT, BaoServer, cli, install_plugin, kill_plugins

TYPES = ["aes256-gcm96", "rsa-2048", "rsa-3072", "rsa-4096", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521"]
# Our type -> the transit type created for comparison (the same names in transit).
TRANSIT_TYPE = {t: t for t in TYPES}
TARGET_RATIO = 1.3


def percentile(samples: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(rank), math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def session(server: BaoServer) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # no proxies: 127.0.0.1 only
    s.headers["X-Vault-Token"] = server.token
    return s


def bench_creation(server: BaoServer, counts: dict[str, int], warmup: int) -> dict[str, dict[str, list[float]]]:
    s = session(server)
    base = f"{server.addr}/v1"
    engines: dict[str, Callable[[str, str], str]] = {
        "keymgmt": lambda key_type, name: f"{base}/{MOUNT}/key/{name}",
        "transit": lambda key_type, name: f"{base}/transit/keys/{name}",
    }
    results: dict[str, dict[str, list[float]]] = {}
    for key_type in TYPES:
        n = counts[key_type]
        results[key_type] = {"keymgmt": [], "transit": []}
        body = {"keymgmt": {"type": key_type}, "transit": {"type": TRANSIT_TYPE[key_type]}}
        for i in range(-warmup, n):
            # Alternate which engine goes first, so neither always follows the other.
            order = ["keymgmt", "transit"] if i % 2 == 0 else ["transit", "keymgmt"]
            for engine in order:
                name = f"bench-{key_type}-{i + warmup}"
                elapsed = timed_post(s, engines[engine](key_type, name), body[engine])
                if i >= 0:
                    results[key_type][engine].append(elapsed)
        print(f"  {key_type}: {n} keys each done", file=sys.stderr, flush=True)
    return results


def bench_missing_read(server: BaoServer, repeats: int) -> dict[str, list[float]]:
    """GET of a key that does not exist: the fixed cost of a request to each engine."""
    s = session(server)
    base = f"{server.addr}/v1"
    urls = {"keymgmt": f"{base}/{MOUNT}/key/no-such-key", "transit": f"{base}/transit/keys/no-such-key"}
    out: dict[str, list[float]] = {"keymgmt": [], "transit": []}
    for _ in range(repeats):
        for engine, url in urls.items():
            t0 = time.perf_counter()
            resp = s.get(url, timeout=60)
            out[engine].append(time.perf_counter() - t0)
            if resp.status_code != 404:
                raise RuntimeError(f"GET {url} -> {resp.status_code}: {resp.text[:300]}")
    return out


def fill(server: BaoServer, url_of: Callable[[str], str], body: dict[str, str], count: int, threads: int) -> float:
    local = threading.local()

    def create(i: int) -> None:
        if not hasattr(local, "s"):
            local.s = session(server)
        resp = local.s.post(url_of(f"key-{i:05d}"), json=body, timeout=300)
        if resp.status_code not in (200, 204):
            raise RuntimeError(f"create {i} -> {resp.status_code}: {resp.text[:300]}")

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(create, range(count)):
            pass
    return time.perf_counter() - t0


def time_list(server: BaoServer, url: str, expected: int, repeats: int) -> list[float]:
    s = session(server)
    timings = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        resp = s.request("LIST", url, timeout=300)
        timings.append(time.perf_counter() - t0)
        if resp.status_code != 200:
            raise RuntimeError(f"LIST {url} -> {resp.status_code}: {resp.text[:300]}")
        got = len(resp.json()["data"]["keys"])
        if got != expected:
            raise RuntimeError(f"LIST {url} returned {got} keys, expected {expected}")
    return timings


def ms(seconds: float) -> str:
    return f"{seconds * 1000:9.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=100, help="keys per type and engine (default 100)")
    parser.add_argument("--n-rsa-4096", type=int, default=30, help="keys for rsa-4096 (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="uncounted creations per type and engine")
    parser.add_argument("--list-keys", type=int, default=10_000, help="keys per mount for LIST (default 10000)")
    parser.add_argument("--list-repeats", type=int, default=20, help="timed LIST calls per engine")
    parser.add_argument("--threads", type=int, default=16, help="threads that create the LIST keys")
    parser.add_argument("--no-transit-list", action="store_true", help="time LIST for keymgmt only")
    args = parser.parse_args()
    for value in (args.n, args.n_rsa_4096, args.list_keys, args.list_repeats, args.threads):
        if not 1 <= value <= 100_000:
            parser.error("counts must be between 1 and 100000")

    counts = {t: (args.n_rsa_4096 if t == "rsa-4096" else args.n) for t in TYPES}
    with tempfile.TemporaryDirectory(prefix="bench-keys-") as tmp:
        server = BaoServer(Path(tmp))
        try:
            install_plugin(server)
            cli(server, "secrets", "enable", "transit")
            version = cli(server, "version").stdout.strip()
            print(f"server: {version} at {server.addr} (dev, in-memory storage)", file=sys.stderr)

            print("key creation (sequential, one HTTP keep-alive connection):", file=sys.stderr)
            results = bench_creation(server, counts, args.warmup)
            baseline = bench_missing_read(server, 200)

            print(f"filling {args.list_keys} keys per mount for LIST...", file=sys.stderr, flush=True)
            cli(server, "secrets", "enable", "-path=keymgmt-list", MOUNT)
            base = f"{server.addr}/v1"
            fill_ours = fill(server, lambda k: f"{base}/keymgmt-list/key/{k}",
                             {"type": "aes256-gcm96"}, args.list_keys, args.threads)
            list_ours = time_list(server, f"{base}/keymgmt-list/key", args.list_keys, args.list_repeats)
            list_transit: list[float] | None = None
            fill_transit = 0.0
            if not args.no_transit_list:
                cli(server, "secrets", "enable", "-path=transit-list", "transit")
                fill_transit = fill(server, lambda k: f"{base}/transit-list/keys/{k}",
                                    {"type": "aes256-gcm96"}, args.list_keys, args.threads)
                list_transit = time_list(server, f"{base}/transit-list/keys", args.list_keys, args.list_repeats)
        finally:
            server.stop()
            kill_plugins(server)

    print()
    print("Key creation latency, ms (HTTP POST through OpenBao; keymgmt = this plugin)")
    header = (f"{'type':<13} {'N':>4} {'ours p50':>9} {'ours p90':>9} {'transit p50':>11} "
              f"{'transit p90':>11} {'ratio p50':>9} {'ratio p90':>9}")
    print(header)
    print("-" * len(header))
    over = []
    for key_type in TYPES:
        ours, transit = results[key_type]["keymgmt"], results[key_type]["transit"]
        o50, o90 = percentile(ours, 50), percentile(ours, 90)
        t50, t90 = percentile(transit, 50), percentile(transit, 90)
        r50, r90 = o50 / t50, o90 / t90
        flag = "  > target" if r50 > TARGET_RATIO else ""
        if flag:
            over.append(key_type)
        print(f"{key_type:<13} {len(ours):>4} {ms(o50)} {ms(o90)} {ms(t50):>11} {ms(t90):>11} "
              f"{r50:>8.2f}x {r90:>8.2f}x{flag}")
    print(f"target: every type within {TARGET_RATIO}x of transit at p50 -> "
          + ("met" if not over else f"NOT met for {', '.join(over)}"))
    b_ours, b_transit = baseline["keymgmt"], baseline["transit"]
    print(f"request baseline (GET of a missing key, 200 calls): keymgmt p50 {ms(percentile(b_ours, 50)).strip()}"
          f" ms, transit p50 {ms(percentile(b_transit, 50)).strip()} ms"
          " (external plugin gRPC + storage round trips vs built-in)")

    print()
    print(f"LIST latency with {args.list_keys} keys in the mount, ms ({args.list_repeats} calls)")
    print(f"  keymgmt: p50 {ms(percentile(list_ours, 50)).strip()}  p90 {ms(percentile(list_ours, 90)).strip()}"
          f"  (filled in {fill_ours:.1f}s with {args.threads} threads)")
    if list_transit is not None:
        print(f"  transit: p50 {ms(percentile(list_transit, 50)).strip()}  "
              f"p90 {ms(percentile(list_transit, 90)).strip()}"
              f"  (filled in {fill_transit:.1f}s with {args.threads} threads)")
        print(f"  ratio p50: {percentile(list_ours, 50) / percentile(list_transit, 50):.2f}x")
    else:
        print("  transit: not measured (--no-transit-list)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
