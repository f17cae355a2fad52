"""Load and scale: keymgmt (this plugin) next to OpenBao's built-in transit under sustained load.

Run through scripts/bench-load. Four parts, all on 127.0.0.1:

1. A mixed workload (key reads, distribution reads, creates, rotations) for a
   fixed time per row at concurrency 1, 4, 16 and 64 against both engines on one
   dev-mode server; throughput, p50/p99 and errors per engine and concurrency,
   and the ratio keymgmt/transit. Transit has no distributions: its
   "dist-read" is a read of another key of the same type (the same request
   shape: one GET of one stored object).
2. The same on a 3-node Raft cluster (cluster.py): writes to the active node,
   reads on the active node in one set of rows and on a standby in another.
3. Plugin RSS (VmRSS of the plugin process) at every tenth of 100,000 requests
   of a read-only mix (which adds no state, so any growth is a leak) and of the
   full mix (which adds keys and versions, so growth follows the state added).
4. At up to 100,000 AES keys (created by many concurrent writers, timed):
   LIST and read latency and plugin RSS at several key counts, for keymgmt and,
   as far as a time budget allows, for transit; then keymgmt again with a cold
   cache after a plugin reload.

The tables go to stdout, progress to stderr. The exit status is 1 on any
failure of the harness (a traceback), 3 when the tables show request errors
(unless --allow-errors), 0 otherwise.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench_keys import percentile
from cluster import BaoCluster, process_cpu_seconds, snapshot_plugin_binary
from fakes import FakeKeyVault
from harness import MOUNT, PLUGIN_BINARY, BaoServer, cli, install_plugin, kill_plugins, plugin_pids, wait_for

ENGINES = ("keymgmt", "transit")
OPS = ("read", "dist-read", "create", "rotate")
MIX = {"read": 50, "dist-read": 20, "create": 15, "rotate": 15}
READ_ONLY_MIX = {"read": 50, "dist-read": 20}
CONCURRENCY = (1, 4, 16, 64)
KMS = "bench"
# Keys read by the workload: one pool per engine, created once, never written again.
READ_TYPES = ("aes256-gcm96", "ecdsa-p256", "rsa-2048")
READ_POOL = 24
# Keys distributed to the Azure fake (software protection: no KEK per import).
DIST_TYPES = ("ecdsa-p256", "rsa-2048")
DIST_POOL = 4
CREATE_TYPE = "aes256-gcm96"
# Keys rotated by a row: a fresh pool per row, so that versions do not pile up across rows.
ROTATE_POOL = 64
RSS_CONCURRENCY = 16
CLK_TCK = os.sysconf("SC_CLK_TCK")

# (engine, what): request errors and wrong answers seen anywhere, printed at the end.
# keymgmt's make the exit status 3; transit's (the peer's) are shown but do not.
REQUEST_ERRORS: list[tuple[str, str]] = []


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----- the machine ---------------------------------------------------------------


def rss_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _ticks_by_pid() -> dict[int, tuple[str, int]]:
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(f"{entry.path}/stat").read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        rest = text.rsplit(")", 1)[1].split()
        out[int(entry.name)] = (comm, int(rest[11]) + int(rest[12]))
    return out


def machine_snapshot(seconds: float = 2.0) -> str:
    """Load average and the busiest processes over `seconds`: what else is running."""
    before = _ticks_by_pid()
    time.sleep(seconds)
    after = _ticks_by_pid()
    by_name: Counter[str] = Counter()
    for pid, (comm, ticks) in after.items():
        if pid in before and before[pid][0] == comm and pid != os.getpid():
            by_name[comm] += ticks - before[pid][1]
    busiest = [f"{comm} {100 * t / CLK_TCK / seconds:.0f}%" for comm, t in by_name.most_common(5) if t > 0]
    return (f"load average {loadavg()} ({os.cpu_count()} cores); busiest over {seconds:.0f} s: "
            + (", ".join(busiest) or "nothing"))


# ----- the load generator --------------------------------------------------------


@dataclass
class Request:
    node: int
    method: str
    path: str
    body: bytes | None = None


@dataclass
class RunResult:
    """One run of the load generator: what was measured inside its window."""

    concurrency: int
    window: float
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: dict[tuple[str, str], str] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    @property
    def n_errors(self) -> int:
        return sum(self.errors.values())

    def all_latencies(self) -> list[float]:
        return [x for v in self.latencies.values() for x in v]

    @property
    def rps(self) -> float:
        return self.ok / self.window if self.window > 0 else float("nan")


class Procs:
    """The server-side processes whose CPU a run is charged with (looked up afresh per run)."""

    def __init__(self, bao: list[int], plugins: list[int]) -> None:
        self.bao, self.plugins = bao, plugins

    def cpu(self) -> dict[str, float]:
        return {
            "bao": sum(process_cpu_seconds(p) for p in self.bao),
            "plugin": sum(process_cpu_seconds(p) for p in self.plugins),
            "client": time.process_time(),
            "busy": busy_seconds(),
        }


def run_load(
    addrs: list[tuple[str, int]],
    token: str,
    plan: Callable[[random.Random, int, int], tuple[str, Request]],
    concurrency: int,
    procs: Procs,
    seed: str,
    duration: float | None = None,
    warmup: float = 0.0,
    count: int | None = None,
    ok_status: tuple[int, ...] = (200, 204),
) -> RunResult:
    """`concurrency` threads, one keep-alive HTTP/1.1 connection per thread and node,
    each sending plan(rng, worker, seq) -> (op, request) back to back.

    Time mode (`duration`): everything that starts in [warmup, warmup+duration)
    after the common start is measured. Count mode (`count`): exactly `count`
    requests, `seq` numbering them 0..count-1 across all workers, all measured.
    A request is an error if it fails at the socket or HTTP level or answers a
    status outside `ok_status`; errors are counted per (op, kind), never raised."""
    if (duration is None) == (count is None):
        raise ValueError("give duration or count")
    headers = {"X-Vault-Token": token, "Content-Type": "application/json"}
    barrier = threading.Barrier(concurrency + 1, timeout=120)
    lock = threading.Lock()
    next_seq = [0]
    window: list[float] = [0.0, 0.0]  # measured from, until
    per_worker: list[RunResult] = [RunResult(concurrency, 0.0) for _ in range(concurrency)]
    failures: list[BaseException] = []

    def claim() -> int | None:
        with lock:
            if next_seq[0] >= count:  # type: ignore[operator]
                return None
            next_seq[0] += 1
            return next_seq[0] - 1

    def worker(w: int) -> None:
        rng = random.Random(f"{seed}/{w}")
        out = per_worker[w]
        conns: dict[int, http.client.HTTPConnection] = {}
        seq = 0
        try:
            barrier.wait()
            while True:
                if count is not None:
                    claimed = claim()
                    if claimed is None:
                        break
                    seq = claimed
                op, req = plan(rng, w, seq)
                seq += 1
                t0 = time.perf_counter()
                if duration is not None and t0 >= window[1]:
                    break
                kind, detail = None, ""
                conn = conns.get(req.node)
                try:
                    if conn is None:
                        conn = conns[req.node] = http.client.HTTPConnection(*addrs[req.node], timeout=120)
                    conn.request(req.method, req.path, body=req.body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    if resp.status not in ok_status:
                        kind, detail = str(resp.status), data[:200].decode(errors="replace")
                except (OSError, http.client.HTTPException) as e:
                    kind, detail = type(e).__name__, str(e)[:200]
                    conn = conns.pop(req.node, None)
                    if conn is not None:
                        conn.close()
                elapsed = time.perf_counter() - t0
                detail = detail.replace("\n", "\\n").replace("\t", "\\t")
                if duration is not None and t0 < window[0]:
                    continue  # warm-up
                if kind is None:
                    out.latencies.setdefault(op, []).append(elapsed)
                else:
                    out.errors[(op, kind)] += 1
                    out.examples.setdefault((op, kind), f"{req.method} {req.path[:80]}: {detail}")
        except BaseException as e:  # a bug in the generator itself, not a request error
            failures.append(e)
            raise
        finally:
            for c in conns.values():
                c.close()

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    if duration is not None:
        window[0], window[1] = start + warmup, start + warmup + duration
    barrier.wait()
    if duration is not None:
        time.sleep(max(0.0, window[0] - time.perf_counter()))
        cpu0 = procs.cpu()
        time.sleep(max(0.0, window[1] - time.perf_counter()))
        cpu1 = procs.cpu()
        measured = duration
    else:
        t_start = time.perf_counter()
        cpu0 = procs.cpu()
    for t in threads:
        t.join()
    if count is not None:
        cpu1 = procs.cpu()
        measured = time.perf_counter() - t_start
    if failures:
        raise RuntimeError("the load generator failed") from failures[0]
    result = RunResult(concurrency, measured)
    for r in per_worker:
        for op, lats in r.latencies.items():
            result.latencies.setdefault(op, []).extend(lats)
        result.errors.update(r.errors)
        for k, v in r.examples.items():
            result.examples.setdefault(k, v)
    result.cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
    return result


def weighted(mix: dict[str, int]) -> list[str]:
    return [op for op, weight in mix.items() for _ in range(weight)]


class Workload:
    """The requests of the mixed workload for one engine: writes to node `write`, reads to node `read`."""

    def __init__(self, engine: str, mix: dict[str, int], prefix: str, rotate_prefix: str,
                 write: int = 0, read: int = 0) -> None:
        self.engine = engine
        self.table = weighted(mix)
        self.prefix = prefix
        self.rotate_prefix = rotate_prefix
        self.write, self.read = write, read
        self.created = 0
        self.rotated = 0
        self.lock = threading.Lock()

    def key_path(self, name: str) -> str:
        return f"/v1/{MOUNT}/key/{name}" if self.engine == "keymgmt" else f"/v1/transit/keys/{name}"

    def __call__(self, rng: random.Random, worker: int, seq: int) -> tuple[str, Request]:
        op = self.table[rng.randrange(len(self.table))]
        if op == "read":
            return op, Request(self.read, "GET", self.key_path(f"read-{rng.randrange(READ_POOL)}"))
        if op == "dist-read":
            i = rng.randrange(DIST_POOL)
            if self.engine == "keymgmt":
                return op, Request(self.read, "GET", f"/v1/{MOUNT}/kms/{KMS}/key/dist-{i}")
            return op, Request(self.read, "GET", self.key_path(f"dist-{i}"))
        if op == "create":
            body = json.dumps({"type": CREATE_TYPE}).encode()
            return op, Request(self.write, "POST", self.key_path(f"{self.prefix}-w{worker}-{seq}"), body)
        name = f"{self.rotate_prefix}-{rng.randrange(ROTATE_POOL)}"
        return op, Request(self.write, "POST", self.key_path(name) + "/rotate", b"{}")


# ----- set-up ---------------------------------------------------------------------


def session(token: str) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # no proxies: 127.0.0.1 only
    s.headers["X-Vault-Token"] = token
    return s


def must(resp: requests.Response, what: str) -> requests.Response:
    """Set-up requests must succeed: anything else is a harness failure."""
    if resp.status_code not in (200, 204):
        raise RuntimeError(f"{what} -> {resp.status_code}: {resp.text[:500]}")
    return resp


def key_url(addr: str, engine: str, name: str) -> str:
    return f"{addr}/v1/{MOUNT}/key/{name}" if engine == "keymgmt" else f"{addr}/v1/transit/keys/{name}"


def create_keys(s: requests.Session, addr: str, engine: str, names: list[str], key_type: str) -> None:
    for name in names:
        must(s.post(key_url(addr, engine, name), json={"type": key_type}, timeout=300), f"create {engine}/{name}")


def set_up_engines(s: requests.Session, addr: str, fake: FakeKeyVault) -> None:
    """The read and distribution pools of both engines, and the provider with its distributions."""
    creds = fake.credentials
    must(s.post(f"{addr}/v1/{MOUNT}/kms/{KMS}",
                json={"provider": "azurekeyvault", "key_collection": "bench", "credentials": creds},
                timeout=60), "configure the provider")
    for engine in ENGINES:
        for i in range(READ_POOL):
            create_keys(s, addr, engine, [f"read-{i}"], READ_TYPES[i % len(READ_TYPES)])
        for i in range(DIST_POOL):
            create_keys(s, addr, engine, [f"dist-{i}"], DIST_TYPES[i % len(DIST_TYPES)])
    for i in range(DIST_POOL):
        must(s.post(f"{addr}/v1/{MOUNT}/kms/{KMS}/key/dist-{i}",
                    json={"purpose": "sign,verify", "protection": "software"}, timeout=300), f"distribute dist-{i}")


def rotate_pool(s: requests.Session, addr: str, engine: str, prefix: str) -> None:
    create_keys(s, addr, engine, [f"{prefix}-{i}" for i in range(ROTATE_POOL)], CREATE_TYPE)


def fake_env(fake: FakeKeyVault) -> dict[str, str | None]:
    """Point the plugin at the Azure fake (the documented overrides; see test_azure.py)."""
    return {
        "KEYMGMT_AZURE_KEYVAULT_ENDPOINT": fake.vault_url,
        "AZURE_AUTHORITY_HOST": fake.authority_url,
        "KEYMGMT_AZURE_IMDS_ENDPOINT": fake.imds_url,
        "KEYMGMT_AZURE_CA_FILE": fake.ca_pem_path,
        "AZURE_TENANT_ID": None, "AZURE_CLIENT_ID": None,
        "AZURE_CLIENT_SECRET": None, "AZURE_ENVIRONMENT": None,
    }


def single_plugin(pids: list[int], where: str) -> int:
    if len(pids) != 1:
        raise RuntimeError(f"{where}: expected one plugin process, found {pids}")
    return pids[0]


def install(server: BaoServer, binary: Path) -> None:
    install_plugin(server, binary)
    cli(server, "secrets", "enable", "transit")


# ----- part 1 and 2: the mixed workload --------------------------------------------


@dataclass
class Row:
    engine: str
    concurrency: int
    reads_on: str
    result: RunResult


def mixed_rows(
    addrs: list[tuple[str, int]], token: str, write: int, reads: dict[str, int], procs: Callable[[], Procs],
    duration: float, warmup: float, concurrencies: tuple[int, ...], tag: str,
) -> list[Row]:
    """Every (reads_on, concurrency, engine) row; the engine order alternates to spread drift."""
    s = session(token)
    waddr = f"http://{addrs[write][0]}:{addrs[write][1]}"
    rows = []
    for reads_on, read in reads.items():
        for ci, conc in enumerate(concurrencies):
            order = ENGINES if ci % 2 == 0 else ENGINES[::-1]
            for engine in order:
                row_id = f"{tag}-{reads_on}-c{conc}-{engine}"
                rot = f"rot-{row_id}"
                rotate_pool(s, waddr, engine, rot)
                wl = Workload(engine, MIX, f"new-{row_id}", rot, write=write, read=read)
                result = run_load(addrs, token, wl, conc, procs(), seed=f"{tag}-{reads_on}-c{conc}",
                                  duration=duration, warmup=warmup)
                rows.append(Row(engine, conc, reads_on, result))
                log(f"  {tag} reads on {reads_on} c={conc:<3} {engine:<8} {result.rps:8.1f} req/s"
                    f"  errors {result.n_errors}")
    return rows


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def note_errors(engine: str, where: str, result: RunResult) -> None:
    for (op, kind), n in sorted(result.errors.items()):
        REQUEST_ERRORS.append((engine, f"{where} {op}: {n} x {kind}; first: {result.examples[(op, kind)]}"))


def print_mixed(rows: list[Row], title: str, with_reads_on: bool) -> None:
    print(title)
    ro = f"{'reads on':<9}" if with_reads_on else ""
    header = (f"{ro}{'engine':<8} {'conc':>4} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} | "
              f"{'x req/s':>7} {'x p50':>6} {'x p99':>6} | {'bao%':>5} {'plug%':>5} {'cli%':>5} {'other%':>6} "
              f"{'srv ms/req':>10}")
    print(header)
    print("-" * len(header))
    by = {(r.reads_on, r.concurrency, r.engine): r.result for r in rows}
    for (reads_on, conc, engine), r in sorted(by.items(), key=lambda kv: (kv[0][0] != "active", kv[0][1],
                                                                          ENGINES.index(kv[0][2]))):
        lats = r.all_latencies()
        p50, p99 = percentile(lats, 50), percentile(lats, 99)
        ratio = f"{'':>7} {'':>6} {'':>6}"
        if engine == "keymgmt":
            t = by[(reads_on, conc, "transit")]
            tl = t.all_latencies()
            ratio = (f"{r.rps / t.rps:>7.2f} {p50 / percentile(tl, 50):>6.2f} {p99 / percentile(tl, 99):>6.2f}")
        cpu = {k: 100 * v / r.window for k, v in r.cpu.items()}
        other = cpu["busy"] - cpu["bao"] - cpu["plugin"] - cpu["client"]
        srv = 1000 * (r.cpu["bao"] + r.cpu["plugin"]) / max(1, r.ok + r.n_errors)
        ro = f"{reads_on:<9}" if with_reads_on else ""
        print(f"{ro}{engine:<8} {conc:>4} {r.rps:>8.1f} {ms(p50):>7} {ms(p99):>7} {r.n_errors:>6} | {ratio} | "
              f"{cpu['bao']:>5.0f} {cpu['plugin']:>5.0f} {cpu['client']:>5.0f} {max(0.0, other):>6.0f} {srv:>10.2f}")
        note_errors(engine, f"{title.split(':')[0]}, {'reads on ' + reads_on + ', ' if with_reads_on else ''}"
                    f"{engine} c={conc}", r)
    print()
    print("Per operation, ms (p50 / p99) and errors")
    cols = "".join(f" {op + ' p50/p99':>19} {'err':>4}" for op in OPS)
    header = f"{'reads on':<9}{'engine':<8} {'conc':>4}{cols}" if with_reads_on else f"{'engine':<8} {'conc':>4}{cols}"
    print(header)
    print("-" * len(header))
    for (reads_on, conc, engine), r in sorted(by.items(), key=lambda kv: (kv[0][0] != "active", kv[0][1],
                                                                          ENGINES.index(kv[0][2]))):
        cells = ""
        for op in OPS:
            lats = r.latencies.get(op, [])
            err = sum(n for (o, _), n in r.errors.items() if o == op)
            cell = f"{ms(percentile(lats, 50))} / {ms(percentile(lats, 99))}" if lats else "-"
            cells += f" {cell:>19} {err:>4}"
        ro = f"{reads_on:<9}" if with_reads_on else ""
        print(f"{ro}{engine:<8} {conc:>4}{cells}")
    print()


# ----- part 3: RSS over 100,000 requests ---------------------------------------------


@dataclass
class RssPoint:
    requests: int
    plugin_kb: int
    bao_kb: int
    pid: int
    errors: int
    rps: float


def rss_series(server: BaoServer, mix: dict[str, int], total: int, points: int, tag: str) -> list[RssPoint]:
    s = session(server.token)
    rot = f"rot-{tag}"
    if "rotate" in mix:
        rotate_pool(s, server.addr, "keymgmt", rot)
    wl = Workload("keymgmt", mix, f"new-{tag}", rot)
    pid = single_plugin(plugin_pids(server), "before the RSS run")
    series = [RssPoint(0, rss_kb(pid)["VmRSS"], rss_kb(server.pid)["VmRSS"], pid, 0, 0.0)]
    done = 0
    chunk = total // points
    for k in range(points):
        n = chunk if k < points - 1 else total - done
        # Each chunk numbers its creates anew: a chunk tag keeps names unique.
        wl.prefix = f"new-{tag}-{k}"
        pid = single_plugin(plugin_pids(server), "during the RSS run")
        r = run_load([("127.0.0.1", server.port)], server.token, wl, RSS_CONCURRENCY,
                     Procs([server.pid], [pid]), seed=f"{tag}-{k}", count=n)
        done += n
        note_errors("keymgmt", f"RSS run ({tag}), requests {done - n}-{done}", r)
        pid = single_plugin(plugin_pids(server), "during the RSS run")
        series.append(RssPoint(done, rss_kb(pid)["VmRSS"], rss_kb(server.pid)["VmRSS"], pid, r.n_errors, r.rps))
        log(f"  RSS {tag}: {done} requests, plugin {series[-1].plugin_kb} kB, {r.rps:.0f} req/s")
    return series


def slope_kb_per_10k(points: list[RssPoint]) -> float:
    """Least-squares growth of plugin RSS, kB per 10,000 requests."""
    xs = [p.requests / 10_000 for p in points]
    ys = [p.plugin_kb for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0


def print_rss(series: dict[str, list[RssPoint]], idle_kb: dict[str, int], state: dict[str, str],
              created: int, per_key_bytes: float | None) -> None:
    names = list(series)
    print(f"Plugin memory over {series[names[0]][-1].requests:,} requests per mix "
          f"(keymgmt only, {RSS_CONCURRENCY} concurrent clients, VmRSS in kB)")
    print(f"  plugin right after mounting, before any request: {idle_kb['plugin']} kB; "
          f"after the mixed-workload rows: {idle_kb['after_rows']} kB")
    header = f"{'requests':>9}" + "".join(f" | {name + ' plugin':>20} {'bao':>8} {'req/s':>6} {'err':>4}"
                                        for name in names)
    print(header)
    print("-" * len(header))
    for i in range(len(series[names[0]])):
        line = f"{series[names[0]][i].requests:>9,}"
        for name in names:
            p = series[name][i]
            line += f" | {p.plugin_kb:>20} {p.bao_kb:>8} {p.rps if i else 0:>6.0f} {p.errors:>4}"
        print(line)
    for name in names:
        pts = series[name]
        half = [p for p in pts if p.requests >= pts[-1].requests / 2]
        pids = sorted({p.pid for p in pts})
        print(f"  {name}: first->last {pts[-1].plugin_kb - pts[0].plugin_kb:+d} kB; second half "
              f"{half[-1].plugin_kb - half[0].plugin_kb:+d} kB, slope over the second half "
              f"{slope_kb_per_10k(half):+.1f} kB per 10k requests; max {max(p.plugin_kb for p in pts)} kB; "
              f"plugin pid {'unchanged (' + str(pids[0]) + ')' if len(pids) == 1 else 'CHANGED: ' + str(pids)}")
        if name in state:
            print(f"    state added: {state[name]}")
        if name == "full mix" and per_key_bytes:
            print(f"    for comparison: {created:,} keys at the {per_key_bytes:.0f} bytes of RSS per cached key that the"
                  f" scale part measured = {created * per_key_bytes / 1024:.0f} kB (versions not counted)")
        if len(pids) != 1:
            REQUEST_ERRORS.append(("keymgmt", f"RSS run ({name}): the plugin process changed: {pids}"))
    print()


# ----- part 4: 100,000 keys ----------------------------------------------------------


@dataclass
class Checkpoint:
    engine: str
    keys: int
    create_seconds: float  # for this segment
    create_keys: int  # created in this segment
    create: RunResult
    list_first: float
    lists: list[float]
    list_bytes: int
    reads: list[float]
    plugin_kb: int
    bao_kb: int


def checkpoints(total: int) -> list[int]:
    return sorted({c for c in (1_000, 10_000, total // 4, total // 2, total) if 0 < c <= total})


def timed_get(conn: http.client.HTTPConnection, path: str, token: str) -> tuple[float, int, bytes]:
    t0 = time.perf_counter()
    conn.request("GET", path, headers={"X-Vault-Token": token})
    resp = conn.getresponse()
    body = resp.read()
    return time.perf_counter() - t0, resp.status, body


def measure_at(server: BaoServer, engine: str, n_keys: int, lists: int, reads: int, rng: random.Random,
               names: list[str] | None = None) -> tuple[float, list[float], int, list[float]]:
    """LIST latency (first, then `lists` more) and `reads` single-key GETs, one connection, one at a time."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    list_path = f"/v1/{MOUNT}/key?list=true" if engine == "keymgmt" else "/v1/transit/keys?list=true"
    try:
        times = []
        size = 0
        for i in range(lists + 1):
            elapsed, status, body = timed_get(conn, list_path, server.token)
            if status != 200:
                raise RuntimeError(f"LIST {engine} at {n_keys} keys -> {status}: {body[:300]!r}")
            got = len(json.loads(body)["data"]["keys"])
            if got != n_keys:
                REQUEST_ERRORS.append((engine, f"LIST {engine}: {got} names where {n_keys} keys were created"))
            times.append(elapsed)
            size = len(body)
        read_times = []
        picks = names if names is not None else [f"s{rng.randrange(n_keys):06d}" for _ in range(reads)]
        for name in picks:
            path = f"/v1/{MOUNT}/key/{name}" if engine == "keymgmt" else f"/v1/transit/keys/{name}"
            elapsed, status, body = timed_get(conn, path, server.token)
            if status != 200:
                REQUEST_ERRORS.append((engine, f"read {engine}/{name} at {n_keys} keys -> {status}: {body[:200]!r}"))
                continue
            read_times.append(elapsed)
    finally:
        conn.close()
    return times[0], times[1:], size, read_times


def scale(server: BaoServer, engine: str, total: int, writers: int, lists: int, reads: int,
          budget: float | None) -> tuple[list[Checkpoint], str]:
    """Create `total` AES keys s000000.. with `writers` concurrent writers, pausing at each
    checkpoint to measure; stop early when the next segment would overrun `budget` seconds."""
    body = json.dumps({"type": CREATE_TYPE}).encode()
    base = f"/v1/{MOUNT}/key/" if engine == "keymgmt" else "/v1/transit/keys/"
    rng = random.Random(f"scale-{engine}")
    done = 0
    spent = 0.0
    out: list[Checkpoint] = []
    stop_note = ""
    for target in checkpoints(total):
        n = target - done
        if budget is not None and out:
            rate = done / spent
            if spent + n / rate > budget:
                stop_note = (f"{engine} stopped at {done:,} keys: the next {n:,} at {rate:.0f} keys/s would take the "
                             f"creation time to {spent + n / rate:.0f} s, over the --transit-budget of {budget:.0f} s")
                break
        offset = done

        def plan(rng_: random.Random, w: int, seq: int, offset: int = offset) -> tuple[str, Request]:
            return "create", Request(0, "POST", f"{base}s{offset + seq:06d}", body)

        pids = plugin_pids(server)
        r = run_load([("127.0.0.1", server.port)], server.token, plan, writers, Procs([server.pid], pids),
                     seed=f"scale-{engine}-{target}", count=n)
        note_errors(engine, f"scale {engine} create {done}-{target}", r)
        spent += r.window
        done = target
        first, rest, size, read_times = measure_at(server, engine, offset_ok(out) + r.ok, lists, reads, rng)
        plugin_kb = rss_kb(single_plugin(plugin_pids(server), "scale"))["VmRSS"]
        out.append(Checkpoint(engine, done, r.window, n, r, first, rest, size, read_times, plugin_kb,
                              rss_kb(server.pid)["VmRSS"]))
        log(f"  scale {engine}: {done:,} keys ({n / r.window:.0f} keys/s in this segment), "
            f"list {first * 1000:.1f} ms, plugin {plugin_kb} kB")
    return out, stop_note


def offset_ok(out: list[Checkpoint]) -> int:
    """Keys that exist from earlier segments (created without error)."""
    return sum(c.create.ok for c in out)


def reload_plugin(server: BaoServer) -> int:
    old = single_plugin(plugin_pids(server), "before the reload")
    s = session(server.token)
    must(s.put(f"{server.addr}/v1/sys/plugins/reload/backend", json={"mounts": [f"{MOUNT}/"]}, timeout=120),
         "plugin reload")
    if not wait_for(lambda: old not in plugin_pids(server), timeout=30):
        raise RuntimeError(f"plugin {old} still running 30 s after the reload")
    # A request of something that is not there starts the new process without filling the cache.
    resp = s.get(f"{server.addr}/v1/{MOUNT}/key/not-a-key", timeout=120)
    if resp.status_code != 404:
        raise RuntimeError(f"probe after reload -> {resp.status_code}: {resp.text[:300]}")
    return single_plugin(wait_for(lambda: plugin_pids(server), timeout=30), "after the reload")


def print_scale(ckpts: dict[str, list[Checkpoint]], notes: list[str], cold: dict[str, Any], writers: int) -> None:
    print(f"Scale: AES keys created by {writers} concurrent writers on one dev-mode server (in-memory storage)")
    header = (f"{'engine':<8} {'keys':>8} {'seconds':>8} {'keys/s':>7} {'create p50':>10} {'p99 ms':>7} "
              f"{'errors':>6}")
    print(header)
    print("-" * len(header))
    for engine, cps in ckpts.items():
        if not cps:
            continue
        secs = sum(c.create_seconds for c in cps)
        lats = [x for c in cps for x in c.create.all_latencies()]
        errs = sum(c.create.n_errors for c in cps)
        print(f"{engine:<8} {cps[-1].keys:>8,} {secs:>8.1f} {cps[-1].keys / secs:>7.0f} {ms(percentile(lats, 50)):>10} "
              f"{ms(percentile(lats, 99)):>7} {errs:>6}")
    print()
    print("At each key count (measured with creation paused; one request at a time over one connection;"
          " RSS in MB)")
    header = (f"{'engine':<8} {'keys':>8} {'seg keys/s':>10} {'list 1st':>9} {'list p50':>9} {'list p99':>9} "
              f"{'list MB':>7} {'read p50':>8} {'read p99':>8} {'plugin':>7} {'bao':>6}")
    print(header)
    print("-" * len(header))
    for engine, cps in ckpts.items():
        for c in cps:
            plugin = f"{c.plugin_kb / 1024:.1f}" if engine == "keymgmt" else "-"
            print(f"{engine:<8} {c.keys:>8,} {c.create_keys / c.create_seconds:>10.0f} {ms(c.list_first):>9} "
                  f"{ms(percentile(c.lists, 50)):>9} {ms(percentile(c.lists, 99)):>9} {c.list_bytes / 1e6:>7.2f} "
                  f"{ms(percentile(c.reads, 50)):>8} {ms(percentile(c.reads, 99)):>8} {plugin:>7} "
                  f"{c.bao_kb / 1024:>6.0f}")
    if cold:
        print(f"keymgmt  {cold['keys']:>8,} after a plugin reload (cold cache): RSS {cold['rss_before'] / 1024:.1f} MB "
              f"fresh; first LIST {ms(cold['list_first'])} ms, then p50 {ms(percentile(cold['lists'], 50))} ms; "
              f"{len(cold['reads'])} reads of distinct uncached keys p50 {ms(percentile(cold['reads'], 50))} / p99 "
              f"{ms(percentile(cold['reads'], 99))} ms; RSS after {cold['rss_after'] / 1024:.1f} MB")
    for note in notes:
        if note:
            print(note)
    km = {c.keys: c for c in ckpts.get("keymgmt", [])}
    tr = {c.keys: c for c in ckpts.get("transit", [])}
    both = sorted(km.keys() & tr.keys())
    if both:
        print("keymgmt/transit at the same key count (p50):  " + ";  ".join(
            f"{k:,}: list x{percentile(km[k].lists, 50) / percentile(tr[k].lists, 50):.2f}, "
            f"read x{percentile(km[k].reads, 50) / percentile(tr[k].reads, 50):.2f}" for k in both))
    print()


# ----- main -----------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=None, help="measured seconds per row (default 10)")
    parser.add_argument("--warmup", type=float, default=None, help="unmeasured seconds before each row (default 1)")
    parser.add_argument("--keys", type=int, default=None, help="keys for the scale part (default 100000)")
    parser.add_argument("--requests", type=int, default=None, help="requests per mix for the RSS part (default 100000)")
    parser.add_argument("--writers", type=int, default=32, help="concurrent writers creating the keys (default 32)")
    parser.add_argument("--transit-budget", type=float, default=None,
                        help="seconds of transit key creation at most (default 240); transit stops at a lower "
                             "key count when the next one would overrun it")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)),
                        help="comma-separated client counts (default 1,4,16,64)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 2 s rows, 10,000 keys, 10,000 requests per RSS mix")
    parser.add_argument("--skip-cluster", action="store_true", help="leave out the 3-node cluster rows")
    parser.add_argument("--skip-scale", action="store_true", help="leave out the 100,000-key part")
    parser.add_argument("--allow-errors", action="store_true", help="exit 0 even when requests failed")
    parser.add_argument("--binary", type=Path, default=PLUGIN_BINARY, help="plugin binary to copy and install")
    args = parser.parse_args()
    quick = args.quick
    duration = args.duration if args.duration is not None else (2.0 if quick else 10.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if quick else 1.0)
    n_keys = args.keys if args.keys is not None else (10_000 if quick else 100_000)
    n_requests = args.requests if args.requests is not None else (10_000 if quick else 100_000)
    budget = args.transit_budget if args.transit_budget is not None else (60.0 if quick else 240.0)
    concurrencies = tuple(int(c) for c in args.concurrency.split(","))
    if duration <= 0 or warmup < 0 or not 1 <= n_keys <= 999_999 or n_requests < 10 or args.writers < 1 \
            or any(not 1 <= c <= 512 for c in concurrencies):
        parser.error("out-of-range argument")

    t_start = time.monotonic()
    log("sampling the machine ...")
    before = machine_snapshot()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmpdir:
        tmp = Path(tmpdir)
        binary = snapshot_plugin_binary(tmp / "plugin-copy", source=args.binary)
        log(f"plugin binary copied to {binary}")
        with FakeKeyVault() as fake:
            # Part 1 and 3: one dev server.
            server = BaoServer(tmp / "dev", env=fake_env(fake))
            try:
                install(server, binary)
                version = cli(server, "version").stdout.strip()
                pid = single_plugin(plugin_pids(server), "after mounting")
                idle_kb = {"plugin": rss_kb(pid)["VmRSS"]}
                s = session(server.token)
                set_up_engines(s, server.addr, fake)
                log(f"dev server {server.addr} ({version}); mixed workload ...")
                dev_rows = mixed_rows(
                    [("127.0.0.1", server.port)], server.token, 0, {"active": 0},
                    lambda: Procs([server.pid], plugin_pids(server)), duration, warmup, concurrencies, "dev")
                idle_kb["after_rows"] = rss_kb(single_plugin(plugin_pids(server), "after the rows"))["VmRSS"]
                log(f"RSS over {n_requests} requests per mix ...")
                series = {}
                state = {}
                series["read-only"] = rss_series(server, READ_ONLY_MIX, n_requests, 10, "rss-ro")
                keys_before = len(s.get(f"{server.addr}/v1/{MOUNT}/key?list=true", timeout=120).json()["data"]["keys"])
                series["full mix"] = rss_series(server, MIX, n_requests, 10, "rss-mix")
                keys_after = len(s.get(f"{server.addr}/v1/{MOUNT}/key?list=true", timeout=120).json()["data"]["keys"])
                rot_versions = sum(
                    s.get(f"{server.addr}/v1/{MOUNT}/key/rot-rss-mix-{i}", timeout=60).json()["data"]["latest_version"] - 1
                    for i in range(ROTATE_POOL))
                created = keys_after - keys_before - ROTATE_POOL
                state["full mix"] = (f"{created:,} keys created (and {ROTATE_POOL} "
                                     f"rotation targets), {rot_versions:,} versions added by rotations")
                state["read-only"] = f"none (GETs of {READ_POOL} keys and {DIST_POOL} distributions)"
            finally:
                server.stop()
                kill_plugins(server)

            # Part 2: the cluster.
            cluster_rows: list[Row] = []
            if not args.skip_cluster:
                log("starting a 3-node cluster ...")
                with BaoCluster(tmp / "cluster", n=3, binary=binary, env=fake_env(fake)) as c:
                    log(f"cluster up in {c.startup_seconds:.1f}s")
                    active = c.leader()
                    standby = c.standbys()[0]
                    c.cli(active, "secrets", "enable", "transit")
                    c.wait_mount_everywhere("transit/keys/bench-probe")
                    s = session(c.token)
                    set_up_engines(s, c.addr(active), fake)
                    # Everything the reads touch must have reached the standbys.
                    last = [f"{MOUNT}/kms/{KMS}/key/dist-{DIST_POOL - 1}", f"transit/keys/dist-{DIST_POOL - 1}",
                            f"{MOUNT}/key/read-{READ_POOL - 1}"]
                    c.converge(lambda i: all(c.http(i, "GET", p, timeout=10).status_code == 200 for p in last),
                               what="the read pools on every node")
                    addrs = [("127.0.0.1", node.api_port) for node in c.nodes]

                    def cluster_procs() -> Procs:
                        return Procs([n.proc.pid for n in c.nodes if n.proc is not None],
                                     [p for i in range(len(c.nodes)) for p in c.plugin_pids(i)])

                    log(f"cluster: active node{active}, standby node{standby}; mixed workload ...")
                    cluster_rows = mixed_rows(addrs, c.token, active, {"active": active, "standby": standby},
                                              cluster_procs, duration, warmup, concurrencies, "ha")
                    if c.redirects:
                        REQUEST_ERRORS.append(("harness", f"cluster: {len(c.redirects)} redirects seen by the harness"))

        # Part 4: a fresh dev server for the key counts.
        ckpts: dict[str, list[Checkpoint]] = {}
        notes: list[str] = []
        cold: dict[str, Any] = {}
        if not args.skip_scale:
            server = BaoServer(tmp / "scale")
            try:
                install(server, binary)
                log(f"scale: {n_keys:,} keys per engine ...")
                ckpts["keymgmt"], note = scale(server, "keymgmt", n_keys, args.writers, 10, 500, None)
                notes.append(note)
                n_created = offset_ok(ckpts["keymgmt"])
                pid = reload_plugin(server)
                rss_before = rss_kb(pid)["VmRSS"]
                rng = random.Random("cold")
                picks = rng.sample(range(n_keys), min(500, n_keys))
                first, rest, _, reads = measure_at(server, "keymgmt", n_created, 10, 0, rng,
                                                   names=[f"s{i:06d}" for i in picks])
                cold = {"keys": n_created, "rss_before": rss_before, "list_first": first, "lists": rest,
                        "reads": reads, "rss_after": rss_kb(single_plugin(plugin_pids(server), "cold"))["VmRSS"]}
                ckpts["transit"], note = scale(server, "transit", n_keys, args.writers, 10, 500, budget)
                notes.append(note)
            finally:
                server.stop()
                kill_plugins(server)
    after = machine_snapshot()
    elapsed = time.monotonic() - t_start

    print()
    print(f"keymgmt load and scale benchmark; OpenBao {version.split()[1] if ' ' in version else version}, "
          f"plugin {args.binary} (copied at start)")
    print(f"machine at start: {before}")
    print(f"machine at end:   {after}")
    print()
    mix = ", ".join(f"{op} {w}%" for op, w in MIX.items())
    print_mixed(dev_rows, f"Mixed workload, one dev-mode server: {duration:g} s per row after {warmup:g} s warm-up; "
                f"{mix}", with_reads_on=False)
    if cluster_rows:
        print_mixed(cluster_rows, f"Mixed workload, 3-node Raft cluster: writes to the active node, reads on the "
                    f"node named; {duration:g} s per row", with_reads_on=True)
    per_key = None
    km = ckpts.get("keymgmt", [])
    if len(km) >= 2 and km[-1].keys > km[0].keys:
        per_key = (km[-1].plugin_kb - km[0].plugin_kb) * 1024 / (km[-1].keys - km[0].keys)
    print_rss(series, idle_kb, state, created, per_key)
    if ckpts:
        print_scale(ckpts, notes, cold, args.writers)
    for line in (
        "How: requests come from Python threads in this process, one keep-alive HTTP/1.1 connection (http.client)",
        "  per thread and node, back to back without think time; conc = threads. Each row runs its own warm-up",
        "  and then a fixed window; every request started in the window counts. req/s counts successes; an error",
        "  is any status other than 200/204 or a socket/HTTP failure, counted per operation and never retried.",
        f"  The mix per request: {mix}. read = GET key/:name of 24 keys (AES, P-256, RSA-2048 in turn);",
        "  dist-read = GET kms/:name/key/:key of 4 keys (P-256, RSA-2048) distributed once at set-up to the",
        "  Azure Key Vault fake (software protection); reads of a distribution do not call the provider.",
        "  Transit has no distributions: its dist-read is a GET transit/keys/:name of 4 more keys of those types.",
        f"  create = POST of a new {CREATE_TYPE} key; rotate = POST .../rotate of one of {ROTATE_POOL} AES keys,",
        "  a fresh pool per row. Both engines get the same seeded sequence of operations; the engine order",
        "  alternates per row. x = keymgmt/transit in the same run (req/s < 1 and latency > 1 = keymgmt slower).",
        "  CPU: bao% and plug% are the server and plugin processes (all nodes on the cluster; scheduler run time",
        "  from /proc/<pid>/task/*/schedstat), cli% this load generator, other% whatever else ran on the",
        "  machine (/proc/stat busy time minus those three); 100% = one core of 2. srv ms/req = bao + plugin",
        "  CPU per request. The client's own CPU competes with the server for the 2 cores; at conc 64 the",
        "  latencies include waiting for Python's GIL after the response arrived.",
        "  Cluster: 3 nodes with Raft storage, not dev mode; writes always go to the active node; the standby",
        "  serves reads from its own copy of both engines (OpenBao 2.5+); redirects are not followed.",
        f"  RSS: keymgmt only, {RSS_CONCURRENCY} clients; VmRSS of the plugin process (/proc/<pid>/status, the",
        "  process found by its executable as the harness does) sampled with the load paused after every tenth.",
        "  Scale: AES keys s000000.. on a fresh dev server (storage in bao's memory); creation pauses at each key",
        "  count for 11 LISTs (the first shown apart) and 500 GETs of random existing keys, one at a time. The",
        "  plugin keeps keys it created or read in an unbounded cache (as transit does); the reload row shows",
        "  a fresh process that has to read storage.",
        f"  Total run time {elapsed:.0f} s.",
    ):
        print(line)
    print()
    ours = [what for engine, what in REQUEST_ERRORS if engine != "transit"]
    peer = [what for engine, what in REQUEST_ERRORS if engine == "transit"]
    if peer:
        print(f"transit (the peer) request errors, {len(peer)} kinds (they do not fail the run):")
        for line in peer:
            print(f"  {line}")
    if ours:
        print(f"KEYMGMT REQUEST ERRORS, {len(ours)} kinds:")
        for line in ours:
            print(f"  {line}")
        return 0 if args.allow_errors else 3
    print("keymgmt request errors: none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
