"""HA latency: keymgmt (this plugin) and transit on the active node and through a standby.

Run through scripts/bench-ha. One 3-node Raft cluster (cluster.py, 127.0.0.1
only) holds both engines. For every key type it times creates and reads sent
to the active node and to one standby, and prints p50/p90 with the ratio
standby/active next to transit's, so that the standby penalty of the plugin can
be told apart from the host's own (transit pays the forwarding hop too).

Why the CPU columns: OpenBao runs every request on the standby's own copy of
the engine first and forwards it to the active node only when that copy fails
with the read-only storage error (shared/reference/ha-standbys.md). A plugin
that generates the key before its first storage write therefore generates it
twice when the create arrives at a standby. Latency alone cannot show that, so
each create is bracketed with the CPU time of four processes (the standby's and
the active node's bao and plugin), and the standby's plugin log is searched for
its "request failed ... cannot write to readonly storage" line for that key.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench_keys import TYPES, percentile
from cluster import BaoCluster, process_cpu_seconds, snapshot_plugin_binary
from harness import MOUNT, PLUGIN_BINARY

ENGINES = ("keymgmt", "transit")
ROLES = ("active", "standby")
READONLY_LINE = re.compile(r"\[ERROR\].*request failed: storage: cannot write to readonly storage.*path=key/(\S+)")


@dataclass
class CreateSample:
    """One timed create and the CPU each process spent during it (seconds)."""

    seconds: float
    cpu: dict[str, float]


@dataclass
class Results:
    create: dict[tuple[str, str, str], list[CreateSample]] = field(default_factory=dict)
    read: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    # keymgmt key names created through the standby, per type (for the log count).
    standby_names: dict[str, list[str]] = field(default_factory=dict)


class Bench:
    def __init__(self, cluster: BaoCluster, settle_timeout: float) -> None:
        self.c = cluster
        self.active = cluster.leader()
        self.standby = cluster.standbys()[0]
        self.node = {"active": self.active, "standby": self.standby}
        self.settle_timeout = settle_timeout
        self.sessions = {}
        for role, i in self.node.items():
            s = requests.Session()
            s.trust_env = False  # no proxies: 127.0.0.1 only
            s.headers["X-Vault-Token"] = cluster.token
            self.sessions[role] = s

    def url(self, role: str, engine: str, name: str) -> str:
        base = f"{self.c.addr(self.node[role])}/v1"
        return f"{base}/{MOUNT}/key/{name}" if engine == "keymgmt" else f"{base}/transit/keys/{name}"

    def processes(self) -> dict[str, int]:
        """The four processes whose CPU a create is charged with, looked up afresh."""
        procs = {}
        for role, i in self.node.items():
            node = self.c.nodes[i]
            assert node.proc is not None
            procs[f"{role} bao"] = node.proc.pid
            plugins = self.c.plugin_pids(i)
            if len(plugins) != 1:
                raise RuntimeError(f"node{i} runs {len(plugins)} plugin processes: {plugins}")
            procs[f"{role} plugin"] = plugins[0]
        return procs

    def cpu(self, procs: dict[str, int]) -> dict[str, float]:
        return {what: process_cpu_seconds(pid) for what, pid in procs.items()}

    def create(self, role: str, engine: str, key_type: str, name: str) -> CreateSample:
        procs = self.processes()
        before = self.cpu(procs)
        t0 = time.perf_counter()
        resp = self.sessions[role].post(self.url(role, engine, name), json={"type": key_type},
                                        timeout=300, allow_redirects=False)
        elapsed = time.perf_counter() - t0
        if resp.status_code not in (200, 204):
            raise RuntimeError(f"create {engine}/{name} via {role} -> {resp.status_code}: {resp.text[:300]}")
        # The window closes at the response: by then the standby has done (and
        # forwarded) its part and the active node its own. Then let the standby
        # apply the write (and its plugin the invalidation) before the next
        # window opens, so that no create is charged for another's replication.
        after = self.cpu(procs)
        self.visible_on_standby(engine, name)
        return CreateSample(elapsed, {k: max(0.0, after[k] - before[k]) for k in procs})

    def visible_on_standby(self, engine: str, name: str) -> None:
        deadline = time.monotonic() + self.settle_timeout
        while time.monotonic() < deadline:
            if self.sessions["standby"].get(self.url("standby", engine, name), timeout=60).status_code == 200:
                return
            time.sleep(0.005)
        raise RuntimeError(f"{engine}/{name} not readable on the standby after {self.settle_timeout}s")

    def read(self, role: str, engine: str, name: str) -> float:
        t0 = time.perf_counter()
        resp = self.sessions[role].get(self.url(role, engine, name), timeout=60, allow_redirects=False)
        elapsed = time.perf_counter() - t0
        if resp.status_code != 200:
            raise RuntimeError(f"read {engine}/{name} via {role} -> {resp.status_code}: {resp.text[:300]}")
        return elapsed

    def run(self, counts: dict[str, int], reads: int, warmup: int) -> Results:
        out = Results()
        combos = [(e, r) for e in ENGINES for r in ROLES]
        run_id = uuid.uuid4().hex[:6]
        for key_type in TYPES:
            n = counts[key_type]
            for combo in combos:
                out.create[(key_type, *combo)] = []
            out.standby_names[key_type] = []
            for i in range(-warmup, n):
                # Rotate the order so that no combination always follows another.
                k = (i + warmup) % len(combos)
                for engine, role in combos[k:] + combos[:k]:
                    name = f"ha-{run_id}-{key_type}-{role}-{i + warmup}"
                    sample = self.create(role, engine, key_type, name)
                    if i >= 0:
                        out.create[(key_type, engine, role)].append(sample)
                        if engine == "keymgmt" and role == "standby":
                            out.standby_names[key_type].append(name)
            # Reads of one key per engine, created on the active node above.
            names = {e: f"ha-{run_id}-{key_type}-active-0" for e in ENGINES}
            for combo in combos:
                out.read[(key_type, *combo)] = []
            for i in range(-warmup, reads):
                k = (i + warmup) % len(combos)
                for engine, role in combos[k:] + combos[:k]:
                    elapsed = self.read(role, engine, names[engine])
                    if i >= 0:
                        out.read[(key_type, engine, role)].append(elapsed)
            print(f"  {key_type}: {n} creates and {reads} reads per engine and node done",
                  file=sys.stderr, flush=True)
        return out


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def print_latency(results: Results, counts: dict[str, int], reads: int) -> None:
    print("Latency, ms (HTTP through OpenBao 2.7.2; act = the active node, sb = a standby;"
          " ratio = standby/active)")
    header = (f"{'op':<6} {'type':<13} {'engine':<8} {'N':>4} {'act p50':>8} {'act p90':>8} "
              f"{'sb p50':>8} {'sb p90':>8} {'ratio p50':>9} {'ratio p90':>9}")
    print(header)
    print("-" * len(header))
    for op in ("create", "read"):
        for key_type in TYPES:
            for engine in ENGINES:
                if op == "create":
                    act = [s.seconds for s in results.create[(key_type, engine, "active")]]
                    sb = [s.seconds for s in results.create[(key_type, engine, "standby")]]
                else:
                    act = results.read[(key_type, engine, "active")]
                    sb = results.read[(key_type, engine, "standby")]
                a50, a90, s50, s90 = (percentile(act, 50), percentile(act, 90),
                                      percentile(sb, 50), percentile(sb, 90))
                print(f"{op:<6} {key_type:<13} {engine:<8} {len(act):>4} {ms(a50)} {ms(a90)} "
                      f"{ms(s50)} {ms(s90)} {s50 / a50:>8.2f}x {s90 / a90:>8.2f}x")


def print_work(results: Results, standby_log: str) -> None:
    print()
    print("Where a create's CPU went, ms per create (mean; bao = the server process,"
          " plugin = its keymgmt plugin process)")
    header = (f"{'type':<13} {'engine':<8} {'sent to':<8} {'N':>4} {'sb bao':>8} {'sb plugin':>9} "
              f"{'act bao':>8} {'act plugin':>10}")
    print(header)
    print("-" * len(header))
    for key_type in TYPES:
        for engine in ENGINES:
            for role in ROLES:
                samples = results.create[(key_type, engine, role)]
                mean = {k: sum(s.cpu[k] for s in samples) / len(samples) for k in samples[0].cpu}
                print(f"{key_type:<13} {engine:<8} {role:<8} {len(samples):>4} "
                      f"{ms(mean['standby bao'])} {ms(mean['standby plugin']):>9} "
                      f"{ms(mean['active bao'])} {ms(mean['active plugin']):>10}")
    print()
    print("keymgmt creates sent to the standby: did the standby's plugin generate the key too?")
    print("  (one generation = the active plugin's mean CPU per create of that type, over all its creates;")
    print("  for AES and ECDSA it is mostly request handling, generation takes microseconds; RSA prime")
    print("  search varies a lot from key to key, so a small N gives rough shares)")
    seen = set(READONLY_LINE.findall(standby_log))
    for key_type in TYPES:
        names = results.standby_names[key_type]
        logged = sum(1 for n in names if n in seen)
        via_sb = results.create[(key_type, "keymgmt", "standby")]
        every = via_sb + results.create[(key_type, "keymgmt", "active")]
        one = sum(s.cpu["active plugin"] for s in every) / len(every)
        sb = sum(s.cpu["standby plugin"] for s in via_sb) / len(via_sb)
        share = sb / one if one > 0 else float("nan")
        twice = logged == len(names) and share >= 0.3
        print(f"  {key_type:<13} read-only error logged on the standby for {logged}/{len(names)};"
              f" standby plugin {sb * 1000:.1f} ms/create = {share:.2f} x one generation"
              f" ({one * 1000:.1f} ms) -> {'yes: ran the create, key generation included, twice' if twice else 'no'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20, help="creates per type, engine and node (default 20)")
    parser.add_argument("--n-rsa-3072", type=int, default=10, help="creates for rsa-3072 (default 10)")
    parser.add_argument("--n-rsa-4096", type=int, default=5, help="creates for rsa-4096 (default 5)")
    parser.add_argument("--reads", type=int, default=100, help="reads per type, engine and node (default 100)")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds per type (default 1)")
    parser.add_argument("--binary", type=Path, default=PLUGIN_BINARY, help="plugin binary to copy and install")
    parser.add_argument("--settle-timeout", type=float, default=10,
                        help="seconds to wait for a create to reach the standby (default 10)")
    args = parser.parse_args()
    for value in (args.n, args.n_rsa_3072, args.n_rsa_4096, args.reads):
        if not 1 <= value <= 10_000:
            parser.error("counts must be between 1 and 10000")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")

    counts = {t: args.n for t in TYPES}
    counts["rsa-3072"] = args.n_rsa_3072
    counts["rsa-4096"] = args.n_rsa_4096
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-ha-") as tmp:
        binary = snapshot_plugin_binary(Path(tmp) / "plugin-copy", source=args.binary)
        print(f"starting a 3-node cluster with {binary} ...", file=sys.stderr, flush=True)
        with BaoCluster(Path(tmp) / "cluster", n=3, binary=binary) as cluster:
            print(f"cluster up in {cluster.startup_seconds:.1f}s", file=sys.stderr)
            cluster.cli(cluster.leader(), "secrets", "enable", "transit")
            cluster.wait_mount_everywhere("transit/keys/bench-probe")
            bench = Bench(cluster, args.settle_timeout)
            version = cluster.cli(bench.active, "version").stdout.strip()
            print(f"server: {version}; active node{bench.active} {cluster.addr(bench.active)}, "
                  f"standby node{bench.standby} {cluster.addr(bench.standby)}", file=sys.stderr)
            results = bench.run(counts, args.reads, args.warmup)
            standby_log = cluster.log_text(bench.standby)
            redirects = list(cluster.redirects)
    elapsed = time.monotonic() - t_start

    print()
    print_latency(results, counts, args.reads)
    print_work(results, standby_log)
    print()
    for line in (
        "How: one 3-node Raft cluster (not dev mode) on 127.0.0.1, transit and keymgmt mounted side by side.",
        "  Requests go one at a time over one keep-alive connection per node; redirects are not followed",
        f"  ({len(redirects)} seen). Creates rotate over engine x node, so that drift hits all alike. A create's",
        "  time and its CPU window (run time summed over /proc/<pid>/task/*/schedstat of the four processes)",
        "  end at its HTTP response; before the next create the key is polled for on the standby, so that",
        "  replication settles outside the windows. Reads are GETs of one key per type and engine, created",
        "  on the active node. Standby log: the plugin's 'request failed: storage: cannot write to readonly",
        "  storage ... path=key/<name>' lines, matched per key name.",
        f"  Total run time {elapsed:.0f}s.",
    ):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
