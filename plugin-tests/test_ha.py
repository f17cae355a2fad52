"""The plugin on a 3-node OpenBao Raft cluster, with the Azure fake as provider.

What an HA cluster must get right (ha-standbys.md): a write sent to a
standby is forwarded before the standby does any work, so it runs once, on
the active node; writes that depend on each other succeed through the same
standby; reads on every node converge; forwarding is not logged as an
error; and a leader killed in the middle of a workload or of a distribution
loses nothing that was acknowledged and leaves nothing duplicated, the
interrupted distribution finishing when the same command is repeated.
"""

from __future__ import annotations

import json
import random
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster import BaoCluster
from fakes import AzureKeyVaultFake, FakeKeyVault
from harness import MOUNT
from test_azure import DOC_CLIENT, DOC_SECRET, DOC_TENANT, fake_env
from test_cluster import cluster_plugin_binary  # noqa: F401  (a fixture)

IMPORTED = re.compile(r"azure key vault: imported version (\d+) of (\S+) into")


@pytest.fixture(scope="module")
def fake() -> Iterator[AzureKeyVaultFake]:
    with FakeKeyVault(tenant_id=DOC_TENANT, client_id=DOC_CLIENT, client_secret=DOC_SECRET) as started:
        yield started


@pytest.fixture(scope="module")
def cluster(
    cluster_plugin_binary: Path, fake: AzureKeyVaultFake, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
) -> Iterator[BaoCluster]:
    env = {**fake_env(fake), "KEYMGMT_LOG_LEVEL": "debug"}
    c = BaoCluster(tmp_path_factory.mktemp("ha"), n=3, binary=cluster_plugin_binary, env=env)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def kms(cluster: BaoCluster, fake: AzureKeyVaultFake) -> str:
    creds = fake.credentials
    ok(cluster.http(cluster.leader(), "POST", f"{MOUNT}/kms/az", json={
        "provider": "azurekeyvault", "key_collection": "keyvault-name", "credentials": creds}))
    return "az"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ok(resp: Any) -> Any:
    assert resp.status_code in (200, 204), f"{resp.status_code} {resp.text}"
    return resp


def read(cluster: BaoCluster, i: int, path: str) -> dict[str, Any] | None:
    resp = cluster.http(i, "GET", f"{MOUNT}/{path}")
    return resp.json()["data"] if resp.status_code == 200 else None


def imports_logged(cluster: BaoCluster, i: int, target: str) -> list[int]:
    return [int(v) for v, name in IMPORTED.findall(cluster.log_text(i)) if name == target]


def converge_on(cluster: BaoCluster, path: str, want: Any) -> None:
    """Every running node reads `want` at `path` (after the replication lag)."""
    cluster.converge(lambda i: read(cluster, i, path) == want, what=f"{path} == {want!r}")


def azure_versions(fake: AzureKeyVaultFake, name: str) -> list[str]:
    """The Vault version tag of every Azure version of `name`, oldest first."""
    return [v.tags.get("vault_version", "") for v in fake.versions(name)]


# -- forwarding -------------------------------------------------------------------


def test_a_distribution_through_a_standby_runs_once_on_the_active_node(
    cluster: BaoCluster, fake: AzureKeyVaultFake, kms: str
) -> None:
    standby, active = cluster.standbys()[0], cluster.leader()
    key = unique("once")
    ok(cluster.http(standby, "POST", f"{MOUNT}/key/{key}", json={"type": "ecdsa-p256"}))
    for _ in range(2):
        ok(cluster.http(standby, "POST", f"{MOUNT}/key/{key}/rotate"))
    before = len(fake.requests)
    ok(cluster.http(standby, "POST", f"{MOUNT}/kms/{kms}/key/{key}", json={"purpose": "sign,verify"}))
    record = read(cluster, active, f"kms/{kms}/key/{key}")
    assert record is not None
    name = record["name"]
    calls = fake.requests[before:]
    imports = [c for c in calls if c.method == "PUT" and c.path.endswith(f"/keys/{name}")]
    assert len(imports) == 3, f"three versions, imported once each: {calls}"
    assert len([c for c in calls if c.path.endswith("/create")]) == 1, "one key-exchange key"
    # Earlier versions may go up in parallel; the latest is imported last.
    tags = azure_versions(fake, name)
    assert sorted(tags) == ["1", "2", "3"] and tags[-1] == "3", tags
    time.sleep(0.3)  # log lines reach the node's log
    assert imports_logged(cluster, standby, name) == [], "the standby did no provider work"
    logged = imports_logged(cluster, active, name)
    assert sorted(logged) == [1, 2, 3] and logged[-1] == 3, logged
    assert "forwarding a write from this standby" in cluster.log_text(standby)
    converge_on(cluster, f"kms/{kms}/key/{key}", record)


def test_dependent_writes_through_one_standby_and_reads_converge(cluster: BaoCluster, kms: str) -> None:
    for standby in cluster.standbys():
        key = unique("seq")
        steps = [
            ("POST", f"key/{key}", {"type": "aes256-gcm96"}),
            ("POST", f"key/{key}/rotate", None),
            ("POST", f"key/{key}", {"min_enabled_version": 2}),
            ("POST", f"key/{key}", {"deletion_allowed": True}),
        ]
        for method, path, body in steps:
            ok(cluster.http(standby, method, f"{MOUNT}/{path}", json=body))
            want = read(cluster, cluster.leader(), f"key/{key}")
            converge_on(cluster, f"key/{key}", want)
        assert want is not None and (want["latest_version"], want["min_enabled_version"]) == (2, 2)
        ok(cluster.http(standby, "DELETE", f"{MOUNT}/key/{key}"))
        cluster.converge(lambda i: read(cluster, i, f"key/{key}") is None, what="deletion")


def test_no_error_lines_from_the_plugin_in_normal_operation(cluster: BaoCluster) -> None:
    for i in range(len(cluster.nodes)):
        errors = [line for line in cluster.log_text(i).splitlines()
                  if "[ERROR]" in line and "vault-plugin-secrets-keymgmt" in line]
        assert errors == [], f"node{i}: {errors}"


# -- failover ----------------------------------------------------------------------


def test_leader_killed_during_a_mixed_workload_loses_nothing_acknowledged(cluster: BaoCluster) -> None:
    acknowledged: dict[str, int] = {}  # key -> versions acknowledged
    lock = threading.Lock()
    stop = threading.Event()

    def worker(n: int) -> None:
        rng = random.Random(n)
        keys: list[str] = []
        while not stop.is_set():
            node = rng.randrange(len(cluster.nodes))
            try:
                if not keys or rng.random() < 0.4:
                    key = unique(f"w{n}")
                    resp = cluster.http(node, "POST", f"{MOUNT}/key/{key}", json={"type": "aes256-gcm96"}, timeout=10)
                    if resp.status_code in (200, 204):
                        keys.append(key)
                        with lock:
                            acknowledged[key] = 1
                else:
                    key = rng.choice(keys)
                    resp = cluster.http(node, "POST", f"{MOUNT}/key/{key}/rotate", timeout=10)
                    if resp.status_code in (200, 204):
                        with lock:
                            acknowledged[key] += 1
            except Exception:  # noqa: BLE001 - a dead node refuses connections; not acknowledged
                time.sleep(0.05)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    old = cluster.leader()
    cluster.kill(old, signal.SIGKILL)
    new, waited = cluster.wait_for_leader(exclude=[old])
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()
    assert len(acknowledged) >= 5, acknowledged
    survivors = [i for i in range(len(cluster.nodes)) if i != old]
    for key, versions in acknowledged.items():
        data = read(cluster, new, f"key/{key}")
        assert data is not None, f"acknowledged key {key} lost"
        # A rotation answered with an error may still have happened: never fewer.
        assert data["latest_version"] >= versions, (key, versions, data)
        cluster.converge(lambda i, key=key, data=data: read(cluster, i, f"key/{key}") == data,
                         nodes=survivors, what=f"{key} identical")
    # The killed node rejoins and catches up.
    cluster.start(old)
    sample = list(acknowledged)[-3:]
    for key in sample:
        want = read(cluster, new, f"key/{key}")
        cluster.converge(lambda i, key=key, want=want: read(cluster, i, f"key/{key}") == want,
                         nodes=[old], what=f"{key} on the rejoined node")
    print(f"\nfailover in {waited:.1f}s; {len(acknowledged)} keys acknowledged")


def test_leader_killed_during_a_distribution_which_the_repeat_completes(
    cluster: BaoCluster, fake: AzureKeyVaultFake, kms: str
) -> None:
    key = unique("failover")
    active = cluster.leader()
    ok(cluster.http(active, "POST", f"{MOUNT}/key/{key}", json={"type": "ecdsa-p384"}))
    versions = 8
    for _ in range(versions - 1):
        ok(cluster.http(active, "POST", f"{MOUNT}/key/{key}/rotate"))
    # Slow imports, so that the kill lands in the middle.
    fake.inject("PUT", r"/keys/" + re.escape(key) + r"-\d+$", "delay:0.4", times=versions)
    standby = cluster.standbys()[0]
    outcome: dict[str, Any] = {}

    def distribute() -> None:
        try:
            outcome["resp"] = cluster.http(standby, "POST", f"{MOUNT}/kms/{kms}/key/{key}",
                                           json={"purpose": "sign,verify"}, timeout=60)
        except Exception as e:  # noqa: BLE001
            outcome["error"] = e

    thread = threading.Thread(target=distribute)
    thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        names = [n for n in fake.keys() if n.startswith(f"{key}-")]
        if names and len(fake.versions(names[0])) >= 2:
            break
        time.sleep(0.05)
    cluster.kill(active, signal.SIGKILL)
    thread.join()
    new, _ = cluster.wait_for_leader(exclude=[active])
    interrupted = outcome.get("resp")
    assert interrupted is None or interrupted.status_code not in (200, 204), "the kill came too late"

    # The same command, repeated through a survivor, finishes the job.
    survivor = next(i for i in range(len(cluster.nodes)) if i != active)
    ok(cluster.http(survivor, "POST", f"{MOUNT}/kms/{kms}/key/{key}", json={"purpose": "sign,verify"}))
    record = read(cluster, new, f"kms/{kms}/key/{key}")
    assert record is not None and sorted(record["versions"], key=int) == [str(v) for v in range(1, versions + 1)]
    tags = azure_versions(fake, record["name"])
    assert sorted(tags, key=int) == [str(v) for v in range(1, versions + 1)], \
        f"one Azure version per Vault version: {tags}"
    assert tags[-1] == str(versions), f"the latest is current: {tags}"
    by_id = {v.version: v.tags.get("vault_version") for v in fake.versions(record["name"])}
    assert {by_id[azure] for azure in record["versions"].values()} == set(record["versions"]), \
        "each recorded id holds its own version"
    assert len(by_id) == versions
    cluster.converge(lambda i: read(cluster, i, f"kms/{kms}/key/{key}") == record,
                     nodes=[i for i in range(len(cluster.nodes)) if i != active], what="the record")
    cluster.start(active)
    cluster.converge(lambda i: read(cluster, i, f"kms/{kms}/key/{key}") == record, nodes=[active],
                     what="the record on the rejoined node")
    print(json.dumps({"interrupted": getattr(interrupted, "status_code", repr(outcome.get("error")))}))
