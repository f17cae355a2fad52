"""Self-tests of the cluster harness (cluster.py) on a real 3-node OpenBao Raft cluster.

Why these exist: HA tests of the plugin are only as good as the cluster under
them. These check that the harness really builds a 3-voter cluster whose
standbys serve requests themselves, that replication and the keymgmt mount
work on every node, that a SIGKILLed leader is replaced and the killed node
rejoins and catches up, and that nothing is left running afterwards.

One module-scoped cluster serves every test (start-up is most of the cost);
the tests run in file order, the failover test changes the leader (so tests
ask `cluster.leader()` rather than assuming node0), and the last test closes
the cluster itself to check the teardown.
"""

from __future__ import annotations

import json
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import BaoCluster, snapshot_plugin_binary
from harness import MOUNT, PLUGIN_NAME, wait_for

# Generous bounds: the machine has 2 cores and may be compiling at the same time.
STARTUP_BOUND_S = 60
FAILOVER_BOUND_S = 30


@pytest.fixture(scope="session")
def cluster_plugin_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One private copy of the release binary per test session.

    Why: target/release may be rebuilt while the tests run; every node of every
    cluster in this session must run the same bytes (the catalog pins the sha256).
    """
    return snapshot_plugin_binary(tmp_path_factory.mktemp("plugin-copy"))


@pytest.fixture(scope="module")
def cluster(cluster_plugin_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoCluster]:
    c = BaoCluster(tmp_path_factory.mktemp("cluster"), n=3, binary=cluster_plugin_binary)
    print(f"\ncluster start-up: {c.startup_seconds:.1f}s {c.timings}")
    try:
        yield c
    finally:
        c.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ok(status: int) -> bool:
    return status in (200, 204)


def test_three_voters_one_active_two_standbys(cluster: BaoCluster) -> None:
    servers = cluster.raft_servers()
    assert sorted(s["node_id"] for s in servers) == ["node0", "node1", "node2"]
    assert all(s["voter"] for s in servers), servers
    assert [s["node_id"] for s in servers if s["leader"]] == ["node0"]
    assert cluster.leader() == 0
    assert cluster.standbys() == [1, 2]
    for i in range(3):
        assert cluster.addr(i) == f"http://127.0.0.1:{cluster.nodes[i].api_port}"
    assert cluster.startup_seconds < STARTUP_BOUND_S, cluster.timings


def test_plugin_runs_and_initializes_on_every_node(cluster: BaoCluster) -> None:
    # Standbys set the mount up too: one plugin process per node, each running
    # that node's own copy, and each logs Initialize in its node's log.
    pids = {i: cluster.plugin_pids(i) for i in range(3)}
    assert all(len(p) == 1 for p in pids.values()), pids
    assert len({p[0] for p in pids.values()}) == 3
    line = re.compile(re.escape(PLUGIN_NAME) + r": keymgmt mount initialized")
    for i in range(3):
        assert wait_for(lambda i=i: line.search(cluster.log_text(i)), timeout=5), (
            f"no Initialize line in {cluster.nodes[i].log_path}"
        )


def test_cli_and_http_target_one_node(cluster: BaoCluster) -> None:
    # sys/leader answered by a standby says "not me": the request was served there.
    for i in cluster.standbys():
        data = cluster.http(i, "GET", "sys/leader").json()
        assert data["is_self"] is False
        assert data["leader_address"] == cluster.addr(cluster.leader())
        status = json.loads(cluster.cli(i, "status", "-format=json").stdout)
        assert status["ha_enabled"] is True
        assert status["leader_address"] == cluster.addr(cluster.leader())
    assert cluster.http(cluster.leader(), "GET", "sys/leader").json()["is_self"] is True


def test_transit_write_through_standby_visible_everywhere(cluster: BaoCluster) -> None:
    cluster.cli(cluster.leader(), "secrets", "enable", "transit")
    cluster.wait_mount_everywhere("transit/keys/harness-probe")
    name = unique("tr")
    standby = cluster.standbys()[0]

    resp = cluster.http(standby, "POST", f"transit/keys/{name}", json={"type": "ecdsa-p256"})
    assert ok(resp.status_code), resp.text
    took = cluster.converge(
        lambda i: cluster.http(i, "GET", f"transit/keys/{name}").status_code == 200,
        timeout=15, what=f"transit/keys/{name} readable",
    )
    print(f"transit key written through node{standby} readable after {took}")
    types = {cluster.http(i, "GET", f"transit/keys/{name}").json()["data"]["type"] for i in range(3)}
    assert types == {"ecdsa-p256"}
    # The standby forwarded the write over the cluster port; no 307 reached us.
    assert not cluster.redirects


def test_keymgmt_key_written_on_active_reads_on_every_standby(cluster: BaoCluster) -> None:
    name = unique("km")
    active = cluster.leader()
    cluster.cli(active, "write", f"{MOUNT}/key/{name}", "type=rsa-2048")
    expected = cluster.http(active, "GET", f"{MOUNT}/key/{name}").json()["data"]

    def same(i: int) -> bool:
        resp = cluster.http(i, "GET", f"{MOUNT}/key/{name}")
        return resp.status_code == 200 and resp.json()["data"] == expected

    took = cluster.converge(same, nodes=cluster.standbys(), timeout=15, what=f"key {name} on standbys")
    print(f"keymgmt key written on node{active} identical on standbys after {took}")
    listed = cluster.http(cluster.standbys()[-1], "LIST", f"{MOUNT}/key").json()["data"]["keys"]
    assert name in listed


def test_standby_write_sequences_succeed(cluster: BaoCluster) -> None:
    # Each request depends on the one before it; all go to the same standby
    # back to back. The host forwards only on the read-only storage error; a
    # plugin that did its work (and read its storage) on the standby first would
    # see the standby's lagging copy: the rotate would find no key (404), the
    # min_enabled_version check latest_version 1 (400). This one forwards
    # every write before doing anything.
    standby = cluster.standbys()[0]
    failures = []
    for attempt in range(10):
        name = unique(f"seq{attempt}")
        steps = [
            ("create", f"{MOUNT}/key/{name}", {"type": "aes256-gcm96"}),
            ("rotate", f"{MOUNT}/key/{name}/rotate", None),
            ("min_enabled_version=2", f"{MOUNT}/key/{name}", {"min_enabled_version": 2}),
        ]
        for step, path, body in steps:
            resp = cluster.http(standby, "POST", path, json=body)
            if not ok(resp.status_code):
                failures.append(f"attempt {attempt}: {step} -> {resp.status_code} {resp.text.strip()}")
                break
        else:
            data = cluster.http(cluster.leader(), "GET", f"{MOUNT}/key/{name}").json()["data"]
            if (data["latest_version"], data["min_enabled_version"]) != (2, 2):
                failures.append(f"attempt {attempt}: read back {data}")
    assert not failures, f"{len(failures)} of 10 sequences through node{standby} failed:\n" + "\n".join(failures)


def test_sigkill_leader_fails_over_and_killed_node_catches_up(cluster: BaoCluster) -> None:
    old = cluster.leader()
    plugins_before = {i: cluster.plugin_pids(i) for i in range(3)}
    assert all(len(p) == 1 for p in plugins_before.values()), plugins_before
    t0 = time.monotonic()
    cluster.kill(old, signal=signal.SIGKILL)

    # The killed server's plugin notices the lost connection and exits by itself.
    assert wait_for(lambda: not cluster.plugin_pids(old), timeout=5), cluster.plugin_pids(old)
    new, waited = cluster.wait_for_leader(exclude=[old], timeout=FAILOVER_BOUND_S)
    assert new != old

    # First plugin write on the new leader: it runs a fresh plugin process.
    name = unique("after-failover")
    deadline = time.monotonic() + FAILOVER_BOUND_S
    while True:
        resp = cluster.http(new, "POST", f"{MOUNT}/key/{name}", json={"type": "ecdsa-p256"}, timeout=10)
        if ok(resp.status_code) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert ok(resp.status_code), resp.text
    first_write = time.monotonic() - t0
    print(f"SIGKILL node{old}: node{new} leader after {waited:.2f}s, first keymgmt write after {first_write:.2f}s")
    # Promotion tears down the standby-mode mount and starts a fresh plugin
    # (empty caches); the node that stays a standby keeps its process.
    remaining_standby = next(i for i in range(3) if i not in (old, new))
    assert cluster.plugin_pids(new) != plugins_before[new]
    assert cluster.plugin_pids(remaining_standby) == plugins_before[remaining_standby]

    # A key written while the old leader is down ...
    down_key = unique("while-down")
    resp = cluster.http(remaining_standby, "POST", f"{MOUNT}/key/{down_key}", json={"type": "aes256-gcm96"})
    assert ok(resp.status_code), resp.text

    # ... is readable on it once it restarts on its data and rejoins as a standby.
    restart = cluster.start(old)
    assert cluster.state(old) == "standby"
    took = cluster.converge(
        lambda i: cluster.http(i, "GET", f"{MOUNT}/key/{down_key}").status_code == 200,
        nodes=[old], timeout=30, what=f"{down_key} on the restarted node",
    )
    print(f"node{old} restarted to standby in {restart:.2f}s, caught up {took[old]:.2f}s later")
    assert wait_for(lambda: len(cluster.plugin_pids(old)) == 1, timeout=10)
    assert sorted(cluster.standbys() + [cluster.leader()]) == [0, 1, 2]
    assert all(s["voter"] for s in cluster.raft_servers())


def test_teardown_leaves_no_processes(cluster: BaoCluster) -> None:
    # Last in the file on purpose: it stops the module's cluster (close() is
    # idempotent, so the fixture's own close does nothing afterwards).
    assert all(cluster.plugin_pids(i) for i in range(3))
    cluster.close()
    assert cluster.stragglers == [], "teardown had to SIGKILL these"
    assert cluster.leftover_processes() == []
    assert all(not n.running for n in cluster.nodes)
    print(f"teardown took {cluster.timings['teardown']:.2f}s")
