"""A real 3-node OpenBao Raft cluster on 127.0.0.1 with the keymgmt plugin mounted.

Why a separate harness: `BaoServer` runs `bao server -dev`, a single node with
in-memory storage, where every request is served by the active node. On an HA
cluster the host behaves differently in ways that matter to an external plugin
(see shared/reference/ha-standbys.md): standbys launch the plugin too, run
every request first on their own copy and forward it only on the read-only
storage error; standbys serve reads from a copy that lags behind; a failover
restarts the plugin on the new leader. Only a real cluster shows that.

Everything here talks to 127.0.0.1 only. Node indices are 0-based
(`cluster.nodes[0]` is the node that is initialised first and so the first
leader); Raft node ids are `node0`, `node1`, ...
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests

from harness import (
    MOUNT,
    PLUGIN_BINARY,
    PLUGIN_NAME,
    VENV_BIN,
    CliError,
    free_port,
    plugin_version,
)

log = logging.getLogger("cluster")
T = TypeVar("T")

# Raft timings scale with performance_multiplier, 5 by default: a 5 s heartbeat
# timeout, so the bootstrap election after `operator init` alone took 9.3 s and
# a failover 5-10 s. 1 is Raft's own timing (Vault's docs call it the setting
# for production); it brings both to 1-2 s.
# Autopilot promotes a joined node to voter only after it has been healthy for
# server_stabilization_time (10 s by default) and only when its reconcile loop
# runs (every 10 s by default). Both dominate start-up, so the harness lowers
# them; reconcile must stay above update (the server refuses otherwise).
DEFAULT_RAFT_OPTIONS: dict[str, str | int] = {
    "performance_multiplier": 1,
    "autopilot_reconcile_interval": "1s",
    "autopilot_update_interval": "500ms",
}
DEFAULT_STABILIZATION = "2s"


def snapshot_plugin_binary(
    dest_dir: Path, source: Path = PLUGIN_BINARY, timeout: float = 1800, settle: float = 1.0
) -> Path:
    """Copy the plugin binary once into `dest_dir` and return the copy.

    Why: another engineer may be running `cargo build --release` while the tests
    run, which replaces target/release/<plugin> at any moment. A test session
    must install one fixed binary on every node (the plugin catalog pins its
    sha256 and every node checks its own copy against it). So: wait until the
    file exists and has not changed for `settle` seconds, copy it, and check
    that the source did not change during the copy (else try again).
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / PLUGIN_NAME
    deadline = time.monotonic() + timeout
    last: tuple[int, int, int] | None = None
    while True:
        try:
            st = source.stat()
            now = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            now = None
        if now is not None and now == last and os.access(source, os.X_OK):
            shutil.copy2(source, target)
            st = source.stat()
            if (st.st_ino, st.st_size, st.st_mtime_ns) == now:
                return target
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{source} did not appear (or kept changing) for {timeout}s")
        # A binary untouched for a while is settled already: no need to wait.
        if now is not None and time.time() - now[2] / 1e9 > settle:
            last = now
            continue
        last = now
        time.sleep(settle)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _proc_stat(pid: int | str) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def pids_of_executable(target: Path) -> list[int]:
    """Live (non-zombie) processes running the binary at `target` (as harness.plugin_pids)."""
    target_s = str(target)
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(f"{entry.path}/exe").removesuffix(" (deleted)")
            argv0 = Path(f"{entry.path}/cmdline").read_bytes().split(b"\0")[0].decode()
        except (OSError, IndexError, UnicodeDecodeError):
            continue
        fields = _proc_stat(entry.name)
        if fields and fields[0] != "Z" and target_s in (exe, argv0):
            pids.append(int(entry.name))
    return sorted(pids)


def process_cpu_seconds(pid: int) -> float:
    """CPU time a live process has used so far, in seconds, at nanosecond resolution.

    Why not utime+stime of /proc/<pid>/stat: those count 10 ms ticks, coarser
    than a whole AES key creation. The scheduler's per-thread run time
    (/proc/<pid>/task/*/schedstat, first field, ns) is exact; summed over the
    threads alive now it misses threads that have exited, which neither the
    Go host nor the plugin's Tokio workers do while a benchmark runs.
    """
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        raise ProcessLookupError(pid) from None
    for tid in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # the thread exited meanwhile
    return total / 1e9


@dataclass
class Node:
    """One `bao server` process and everything it owns on disk."""

    index: int
    dir: Path
    tmpdir: Path
    api_port: int
    cluster_port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    # Every pid this node ran under; each is also its session id (own process group).
    pids: list[int] = field(default_factory=list)

    @property
    def node_id(self) -> str:
        return f"node{self.index}"

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def data_dir(self) -> Path:
        return self.dir / "raft"

    @property
    def plugin_dir(self) -> Path:
        return self.dir / "plugins"

    @property
    def plugin_path(self) -> Path:
        return self.plugin_dir / PLUGIN_NAME

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    @property
    def config_path(self) -> Path:
        return self.dir / "config.hcl"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class BaoCluster:
    """N `bao server` nodes (not dev mode) with Raft storage, the plugin mounted at keymgmt/.

    Use as a context manager; the constructor does the whole start-up and
    records how long each phase took in `timings` (seconds) and the total in
    `startup_seconds`.
    """

    # Clusters not yet closed, so that a failing test can show their log tails.
    running: set[BaoCluster] = set()

    def __init__(
        self,
        base_dir: Path,
        n: int = 3,
        binary: Path = PLUGIN_BINARY,
        env: dict[str, str | None] | None = None,
        mount: bool = True,
        stabilization_time: str = DEFAULT_STABILIZATION,
        raft_options: dict[str, str | int] | None = None,
        version: str | None = None,
        timeout: float = 90,
    ) -> None:
        """`binary` is installed as is: pass a private copy (snapshot_plugin_binary)
        when the build may change underneath. `env` adds variables to every node's
        (and so every plugin's) environment; None removes one. `raft_options` are
        extra keys of the `storage "raft"` stanza (e.g. performance_multiplier).
        `version` is registered with the plugin (default: Cargo.toml's, as
        harness.plugin_version()); the host refuses a binary that reports another."""
        if n < 1:
            raise ValueError("a cluster needs at least one node")
        self.base_dir = Path(base_dir).resolve()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.binary = Path(binary)
        self.version = version if version is not None else plugin_version()
        self.stabilization_time = stabilization_time
        self.raft_options = {**DEFAULT_RAFT_OPTIONS, **(raft_options or {})}
        self.timeout = timeout
        self.token = ""
        self.unseal_key = ""
        self.timings: dict[str, float] = {}
        self.startup_seconds = 0.0
        # 3xx answers seen by http(): (node, method, path, status, Location).
        self.redirects: list[tuple[int, str, str, int, str]] = []
        # What teardown had to SIGKILL (pid, description); empty after a clean stop.
        self.stragglers: list[tuple[int, str]] = []
        self._closed = False
        self._sessions: dict[int, requests.Session] = {}
        # Host and plugin put Unix sockets in TMPDIR; sun_path is 108 bytes, and
        # pytest's tmp paths can be long, so TMPDIRs live under a short /tmp dir.
        self._short_root = Path(tempfile.mkdtemp(prefix="bc", dir="/tmp"))
        self.nodes: list[Node] = []
        BaoCluster.running.add(self)
        try:
            self._create_nodes(n, env or {})
            self._boot(mount)
        except BaseException:
            self.close(check=False)
            raise

    # ----- start-up -------------------------------------------------------

    def _create_nodes(self, n: int, extra_env: dict[str, str | None]) -> None:
        taken: set[int] = set()
        for i in range(n):
            while True:
                # API port and cluster port side by side, none reused across nodes.
                port = free_port(span=2)
                if not {port, port + 1} & taken:
                    taken |= {port, port + 1}
                    break
            node_dir = self.base_dir / f"node{i}"
            tmpdir = self._short_root / f"n{i}"
            for d in (node_dir / "raft", node_dir / "plugins", tmpdir):
                d.mkdir(parents=True, exist_ok=True)
            node_env = {
                **os.environ,
                "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "TMPDIR": str(tmpdir),
            }
            for name in list(node_env):
                # A VAULT_ADDR/BAO_TOKEN of the caller's shell must not leak into a node.
                if name.startswith(("VAULT_", "BAO_")):
                    del node_env[name]
            for name, value in extra_env.items():
                if value is None:
                    node_env.pop(name, None)
                else:
                    node_env[name] = value
            node = Node(i, node_dir, tmpdir, port, port + 1, node_env)
            shutil.copy2(self.binary, node.plugin_path)
            node.config_path.write_text(self._config(node))
            self.nodes.append(node)

    def _config(self, node: Node) -> str:
        raft_extra = "".join(
            f"  {k} = {v if isinstance(v, int) else chr(34) + v + chr(34)}\n"
            for k, v in self.raft_options.items()
        )
        # No disable_mlock: OpenBao 2.7.2 warns that it is an unknown field
        # (it does not mlock), so leaving it out keeps the log clean.
        return (
            f'storage "raft" {{\n  path = "{node.data_dir}"\n  node_id = "{node.node_id}"\n{raft_extra}}}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{node.api_port}"\n'
            f'  cluster_address = "127.0.0.1:{node.cluster_port}"\n  tls_disable = true\n}}\n'
            f'api_addr = "{node.addr}"\n'
            f'cluster_addr = "https://127.0.0.1:{node.cluster_port}"\n'
            f'plugin_directory = "{node.plugin_dir}"\n'
            'log_level = "debug"\n'
            "ui = false\n"
        )

    def _boot(self, mount: bool) -> None:
        t0 = time.monotonic()

        def mark(phase: str) -> None:
            self.timings[phase] = round(time.monotonic() - t0, 3)

        # All processes at once: the joiners start while node 0 initialises.
        for node in self.nodes:
            self._launch(node)
        leader = self.nodes[0]
        self._wait_listening(leader)
        mark("node0 listening")
        init = self.cli(
            0, "operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json", token=False
        ).stdout
        data = json.loads(init)
        self.unseal_key = data["unseal_keys_b64"][0]
        self.token = data["root_token"]
        mark("node0 initialised")
        self._unseal(0)
        self._wait_state(0, "active")
        mark("node0 active")
        self.cli(
            0,
            "operator",
            "raft",
            "autopilot",
            "set-config",
            f"-server-stabilization-time={self.stabilization_time}",
        )

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            joins = [pool.submit(self._join, node.index) for node in self.nodes[1:]]
            if mount:
                self._register_and_mount(0)
                mark("plugin mounted on node0")
            for j in joins:
                j.result()
        mark("joined and unsealed")
        self._wait_voters(len(self.nodes))
        mark("all voters")
        for node in self.nodes[1:]:
            self._wait_state(node.index, "standby")
        if mount:
            self.wait_mount_everywhere(f"{MOUNT}/key/harness-probe")
            mark("mount works on every node")
        self.startup_seconds = round(time.monotonic() - t0, 3)
        log.info("cluster of %d up in %.1fs: %s", len(self.nodes), self.startup_seconds, self.timings)

    def _launch(self, node: Node) -> None:
        with open(node.log_path, "ab") as out:
            out.write(f"==== harness: launching {node.node_id} at {time.ctime()} ====\n".encode())
            out.flush()
            node.proc = subprocess.Popen(
                [str(VENV_BIN / "bao"), "server", f"-config={node.config_path}"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=node.env,
                cwd=node.dir,
                # Own process group: a terminal Ctrl-C reaches only us, and the
                # group lets teardown find whatever the node left behind.
                start_new_session=True,
            )
        node.pids.append(node.proc.pid)

    def _wait_listening(self, node: Node) -> None:
        def up() -> bool:
            self._check_alive(node)
            try:
                requests.get(f"{node.addr}/v1/sys/health", timeout=1)
                return True
            except requests.ConnectionError:
                return False

        self._poll(up, f"{node.node_id} API listening", interval=0.05)

    def _join(self, i: int) -> None:
        node = self.nodes[i]
        self._wait_listening(node)
        self.cli(i, "operator", "raft", "join", self.nodes[0].addr, token=False)
        # The join completes during unseal: the joiner answers the leader's
        # challenge with the barrier key.
        self._unseal(i)
        self._wait_state(i, "standby")

    def _unseal(self, i: int) -> None:
        # Over HTTP rather than the CLI: a process less per node on 2 cores.
        resp = self._session(i).put(
            f"{self.nodes[i].addr}/v1/sys/unseal", json={"key": self.unseal_key}, timeout=30
        )
        if resp.status_code != 200:
            raise RuntimeError(f"unseal of node{i} -> {resp.status_code}: {resp.text}")

    def _register_and_mount(self, i: int) -> None:
        node = self.nodes[i]
        try:
            self.cli(
                i,
                "plugin",
                "register",
                f"-sha256={sha256_of(node.plugin_path)}",
                f"-command={PLUGIN_NAME}",
                f"-version={self.version}",
                "secret",
                MOUNT,
            )
            self.cli(i, "secrets", "enable", MOUNT)
        except CliError as e:
            e.add_note(f"--- {node.log_path} tail ---\n{self.log_tail(i)}")
            raise

    def _wait_voters(self, n: int) -> None:
        def enough() -> bool:
            servers = self.raft_servers()
            return len(servers) == n and all(s.get("voter") for s in servers)

        self._poll(enough, f"{n} Raft voters")

    def wait_mount_everywhere(
        self, probe_path: str, ok: Iterable[int] = (200, 404), nodes: Iterable[int] | None = None
    ) -> None:
        """Poll `GET probe_path` on each node until it answers with a status in `ok`.

        Why: a standby sets up a mount only when the replicated mount table
        reaches it and its plugin has started; until then it answers 5xx, or
        404 "no handler for route" (which must not pass for the engine's own
        404 of a missing key). A test that reads through a standby right after
        `secrets enable` would otherwise fail at random.
        """
        wanted = set(ok)
        for i in nodes if nodes is not None else range(len(self.nodes)):
            last: list[str] = []

            def works(i: int = i, last: list[str] = last) -> bool:
                resp = self.http(i, "GET", probe_path, timeout=10)
                last[:] = [f"{resp.status_code} {resp.text[:200]}"]
                return resp.status_code in wanted and "no handler for route" not in resp.text

            self._poll(works, f"GET {probe_path} on node{i} in {sorted(wanted)} (last: {last})")

    def converge(
        self, check: Callable[[int], bool], nodes: Iterable[int] | None = None,
        timeout: float | None = None, what: str = "a condition",
    ) -> dict[int, float]:
        """Poll check(i) on each node until it holds everywhere; return the seconds
        each node took, counted from the call.

        Why: standbys apply the leader's Raft log some 50-100 ms after a write is
        acknowledged, so a read through a standby right after a write may still
        see the old state. Tests of replication must wait, and the harness says
        how long the wait was.
        """
        t0 = time.monotonic()
        todo = list(nodes if nodes is not None else (n.index for n in self.nodes if n.running))
        took: dict[int, float] = {}

        def all_done() -> bool:
            for i in list(todo):
                if check(i):
                    took[i] = round(time.monotonic() - t0, 3)
                    todo.remove(i)
            return not todo

        self._poll(all_done, f"{what} on nodes {todo}", timeout=timeout, interval=0.02)
        return took

    # ----- state ----------------------------------------------------------

    def health(self, i: int) -> dict[str, Any] | None:
        """sys/health of node i (always 200 thanks to the *ok flags), None if unreachable."""
        try:
            resp = self._session(i).get(
                f"{self.nodes[i].addr}/v1/sys/health",
                params={"standbyok": "true", "perfstandbyok": "true", "sealedcode": "200",
                        "uninitcode": "200"},
                timeout=2,
            )
            return resp.json()
        except (requests.RequestException, ValueError):
            return None

    def state(self, i: int) -> str:
        """'active', 'standby', 'sealed', 'uninitialized' or 'down' as sys/health says."""
        if not self.nodes[i].running:
            return "down"
        h = self.health(i)
        if h is None:
            return "down"
        if not h.get("initialized"):
            return "uninitialized"
        if h.get("sealed"):
            return "sealed"
        return "standby" if h.get("standby") else "active"

    def _wait_state(self, i: int, want: str) -> None:
        def reached() -> bool:
            self._check_alive(self.nodes[i])
            return self.state(i) == want

        self._poll(reached, f"node{i} {want}", interval=0.05)

    def leader(self) -> int:
        """Index of the node that is active now (sys/health), or raise."""
        active = [i for i, n in enumerate(self.nodes) if n.running and self.state(i) == "active"]
        if len(active) != 1:
            raise RuntimeError(f"expected exactly one active node, found {active}")
        return active[0]

    def standbys(self) -> list[int]:
        """Indices of running nodes that report standby."""
        return [i for i, n in enumerate(self.nodes) if n.running and self.state(i) == "standby"]

    def addr(self, i: int) -> str:
        return self.nodes[i].addr

    def raft_servers(self) -> list[dict[str, Any]]:
        """`operator raft list-peers` as data (asked of whichever node answers)."""
        for i, node in enumerate(self.nodes):
            if not node.running:
                continue
            try:
                resp = self.http(i, "GET", "sys/storage/raft/configuration", timeout=5)
            except requests.RequestException:
                continue
            if resp.status_code == 200:
                return resp.json()["data"]["config"]["servers"]
        return []

    def wait_for_leader(
        self, exclude: Iterable[int] = (), timeout: float = 60, writable: bool = True
    ) -> tuple[int, float]:
        """Wait for one active node outside `exclude` that every other running node
        names as leader and, when `writable`, through which every running node
        accepts a write; return (its index, seconds waited).

        Why both: a standby that still points at the old leader forwards nothing,
        and even one that names the new leader answers writes with 307 for a few
        hundred ms after a failover, until its forwarding connection to the new
        active node is up (the dial fails "tls: internal error" while that node
        is still setting up its cluster listener). A new active node alone does
        not make the cluster usable.
        """
        excluded = set(exclude)
        t0 = time.monotonic()
        found: list[int] = []

        def settled() -> bool:
            candidates = [i for i, n in enumerate(self.nodes) if n.running and i not in excluded]
            active = [i for i in candidates if self.state(i) == "active"]
            if len(active) != 1:
                return False
            addr = self.nodes[active[0]].addr
            for i in candidates:
                try:
                    data = self._session(i).get(f"{self.nodes[i].addr}/v1/sys/leader", timeout=2).json()
                except (requests.RequestException, ValueError):
                    return False
                if data.get("leader_address") != addr:
                    return False
            if writable and not all(self.probe_write(i) for i in candidates):
                return False
            found[:] = active
            return True

        self._poll(settled, f"a leader outside {sorted(excluded)}", timeout=timeout, interval=0.05)
        return found[0], time.monotonic() - t0

    def probe_write(self, i: int) -> bool:
        """Whether a harmless, idempotent write through node i succeeds now.

        It writes a deny-only ACL policy (sys/policies/acl/harness-probe), which a
        standby must forward; the status goes through raw requests so that the
        expected 307s of a failover do not land in `self.redirects`.
        """
        try:
            resp = self._session(i).put(
                f"{self.nodes[i].addr}/v1/sys/policies/acl/harness-probe",
                headers={"X-Vault-Token": self.token},
                json={"policy": 'path "harness-probe/*" { capabilities = ["deny"] }'},
                allow_redirects=False,
                timeout=5,
            )
        except requests.RequestException:
            return False
        return resp.status_code in (200, 204)

    # ----- talking to one node ---------------------------------------------

    def _session(self, i: int) -> requests.Session:
        s = self._sessions.get(i)
        if s is None:
            s = requests.Session()
            s.trust_env = False  # no proxies: 127.0.0.1 only
            self._sessions[i] = s
        return s

    def http(self, i: int, method: str, path: str, **kwargs: Any) -> requests.Response:
        """A raw API call (`/v1/<path>`) to node i with the root token.

        Redirects are never followed: a standby that answers 307 has *not*
        served the request, and following it would hide exactly what HA tests
        look at. Each 3xx is logged and recorded in `self.redirects`.
        """
        kwargs.setdefault("timeout", 120)
        kwargs["allow_redirects"] = False
        headers = {"X-Vault-Token": self.token, **kwargs.pop("headers", {})}
        resp = self._session(i).request(
            method, f"{self.nodes[i].addr}/v1/{path}", headers=headers, **kwargs
        )
        if 300 <= resp.status_code < 400:
            location = resp.headers.get("Location", "")
            self.redirects.append((i, method, path, resp.status_code, location))
            log.warning("node%d answered %s %s with %d -> %s (not followed)",
                        i, method, path, resp.status_code, location)
        return resp

    def cli_env(self, i: int, token: bool = True) -> dict[str, str]:
        """Environment for a `vault` command aimed at node i only."""
        env = {
            **self.nodes[i].env,
            "VAULT_ADDR": self.nodes[i].addr,
            "BAO_ADDR": self.nodes[i].addr,
            # The CLI follows one 307 by default; a standby's redirect must show.
            "VAULT_DISABLE_REDIRECTS": "true",
            "BAO_DISABLE_REDIRECTS": "true",
        }
        if token and self.token:
            env["VAULT_TOKEN"] = env["BAO_TOKEN"] = self.token
        return env

    def cli(
        self, i: int, *args: str, check: bool = True, token: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run `vault <args>` against node i (VAULT_ADDR of that node, root token)."""
        result = subprocess.run(
            [str(VENV_BIN / "vault"), *args],
            env=self.cli_env(i, token),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.base_dir,
        )
        if check and result.returncode != 0:
            raise CliError(result)
        return result

    # ----- processes -------------------------------------------------------

    def plugin_pids(self, i: int) -> list[int]:
        """Live processes running node i's copy of the plugin."""
        return pids_of_executable(self.nodes[i].plugin_path)

    def log_text(self, i: int) -> str:
        return self.nodes[i].log_path.read_text(errors="replace")

    def log_tail(self, i: int, lines: int = 60) -> str:
        return "\n".join(self.log_text(i).splitlines()[-lines:])

    def kill(self, i: int, signal: int = signal.SIGKILL, timeout: float = 30) -> None:
        """Send `signal` to node i's bao process (not its plugin) and wait for it to exit.

        Only the server is signalled, as when a host process crashes: the
        plugin must notice the lost connection and exit by itself.
        """
        node = self.nodes[i]
        if not node.running:
            raise RuntimeError(f"node{i} is not running")
        assert node.proc is not None
        node.proc.send_signal(signal)
        node.proc.wait(timeout)

    def stop(self, i: int, timeout: float = 30) -> int:
        """SIGTERM node i and wait; SIGKILL (and record a straggler) if it hangs."""
        node = self.nodes[i]
        if node.proc is None:
            return 0
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.stragglers.append((node.proc.pid, f"{node.node_id} bao ignored SIGTERM"))
                log.warning("node%d did not stop within %ss; SIGKILL", i, timeout)
                node.proc.kill()
                node.proc.wait()
        return node.proc.returncode

    def start(self, i: int) -> float:
        """Restart a stopped node on its existing data and unseal it; return the
        seconds until it reports standby (or active, for a cluster of one)."""
        node = self.nodes[i]
        if node.running:
            raise RuntimeError(f"node{i} is still running")
        t0 = time.monotonic()
        self._launch(node)
        self._wait_listening(node)
        self._unseal(i)
        self._poll(lambda: self.state(i) in ("standby", "active"), f"node{i} unsealed and in the cluster")
        return time.monotonic() - t0

    def leftover_processes(self) -> list[tuple[int, str]]:
        """Processes of this cluster still alive: a plugin copy of any node, or
        anything in a session that one of our bao processes led."""
        sessions = {pid for node in self.nodes for pid in node.pids}
        plugin_paths = {str(node.plugin_path) for node in self.nodes}
        found: dict[int, str] = {}
        for node in self.nodes:
            for pid in pids_of_executable(node.plugin_path):
                found[pid] = f"{node.node_id} plugin"
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            fields = _proc_stat(entry.name)
            if not fields or fields[0] == "Z":
                continue
            # stat fields after ")": state ppid pgrp session ...
            if int(fields[3]) in sessions and int(entry.name) not in found:
                try:
                    argv = Path(f"{entry.path}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                kind = "plugin" if any(p in argv for p in plugin_paths) else "process"
                found[int(entry.name)] = f"{kind} in session {fields[3]}: {argv[:120]}"
        return sorted(found.items())

    def close(self, check: bool = True, plugin_exit_timeout: float = 10) -> None:
        """Stop every node (SIGTERM, all at once), wait for their plugins to exit by
        themselves, SIGKILL and record whatever is left (`self.stragglers`), and
        raise if anything survives even that (when `check`)."""
        if self._closed:
            return
        self._closed = True
        t0 = time.monotonic()
        for node in self.nodes:
            if node.running:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            self.stop(node.index)
        # The host does not kill its plugins on SIGTERM: they exit when the
        # connection goes. Give them that chance before calling them stragglers.
        deadline = time.monotonic() + plugin_exit_timeout
        while self.leftover_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid, what in self.leftover_processes():
            self.stragglers.append((pid, what))
            log.warning("teardown: SIGKILL straggler %d (%s)", pid, what)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.timings["teardown"] = round(time.monotonic() - t0, 3)
        for s in self._sessions.values():
            s.close()
        BaoCluster.running.discard(self)
        shutil.rmtree(self._short_root, ignore_errors=True)
        left = wait_gone(self.leftover_processes, timeout=5)
        if check and left:
            raise RuntimeError(f"processes of the cluster survived SIGKILL: {left}")

    def __enter__(self) -> BaoCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(check=exc[0] is None)

    # ----- helpers ---------------------------------------------------------

    def _check_alive(self, node: Node) -> None:
        if node.proc is not None and node.proc.poll() is not None:
            raise RuntimeError(
                f"{node.node_id} exited with {node.proc.returncode}:\n{self.log_tail(node.index)}"
            )

    def _poll(
        self, predicate: Callable[[], bool], what: str, timeout: float | None = None,
        interval: float = 0.1,
    ) -> None:
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            try:
                if predicate():
                    return
            except requests.RequestException:
                pass
            if time.monotonic() >= deadline:
                tails = "\n".join(
                    f"--- node{n.index} ({n.log_path}) ---\n{self.log_tail(n.index, 25)}"
                    for n in self.nodes
                )
                raise TimeoutError(f"timed out waiting for {what}\n{tails}")
            time.sleep(interval)


def wait_gone(probe: Callable[[], list[T]], timeout: float) -> list[T]:
    """Poll until probe() returns an empty list; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        left = probe()
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)
