"""Crash at every step: the plugin aborts after the Nth provider call or storage
write of a distribution, a rotation and a removal, for every N, and repeating
the request after the host relaunched the plugin converges.

The plugin under test is the `failpoints` build (scripts/test builds it; the
release binary has no crash points). It reads `KEYMGMT_FAILPOINTS_FILE`,
which holds `<provider|storage> <n> <nonce>`, and aborts right after the Nth
such operation, removing the file first so that the relaunched process runs
normally. A request whose file is still there afterwards had fewer than N
operations: the matrix for that step is complete.

The host may answer a crash itself: when it notices the exit before the
failed call returns, it relaunches the plugin and sends the request once more
(host-observations.md §8, the v5 wrapper's retry on ErrPluginShutdown). The
request then succeeds, and what it left must already have converged.

Convergence, checked in the Azure fake (which unwraps every import) and in
Vault: every Vault version is in the provider exactly once under the
distribution's name, the record maps each to that Azure version, nothing is
lost, and a removal leaves the key deleted in Azure and no record.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fakes import AzureKeyVaultFake, FakeKeyVault
from harness import FAILPOINTS_BINARY, MOUNT, BaoServer, http, install_plugin, kill_plugins, plugin_pids, wait_for
from test_azure import DOC_CLIENT, DOC_SECRET, DOC_TENANT, fake_env

MAX_STEPS = 60
RESULTS: dict[str, int] = {}
HOST_RETRIES: list[str] = []


@pytest.fixture(scope="module")
def fake() -> Iterator[AzureKeyVaultFake]:
    with FakeKeyVault(tenant_id=DOC_TENANT, client_id=DOC_CLIENT, client_secret=DOC_SECRET) as started:
        yield started


@pytest.fixture(scope="module")
def failpoint_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("failpoints") / "armed"


@pytest.fixture(scope="module")
def server(fake: AzureKeyVaultFake, failpoint_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoServer]:
    env = {**fake_env(fake), "KEYMGMT_FAILPOINTS_FILE": str(failpoint_file), "KEYMGMT_LOG_LEVEL": "info"}
    srv = BaoServer(tmp_path_factory.mktemp("crash"), env=env)
    try:
        install_plugin(srv, FAILPOINTS_BINARY)
        yield srv
    finally:
        srv.stop()
        kill_plugins(srv)


def request(server: BaoServer, method: str, path: str, body: dict[str, Any] | None = None) -> int:
    return http(server, method, f"{MOUNT}/{path}", json=body, timeout=120).status_code


def must(server: BaoServer, method: str, path: str, body: dict[str, Any] | None = None) -> None:
    """The request succeeds. Right after a crash the host may still dial the
    dead plugin's socket for a moment (it relaunches once it has noticed the
    exit), which a user would answer by trying again: so does this."""
    for _ in range(20):
        resp = http(server, method, f"{MOUNT}/{path}", json=body, timeout=120)
        if resp.status_code == 500 and "Unavailable" in resp.text:
            time.sleep(0.25)
            continue
        break
    assert resp.status_code in (200, 204), f"{method} {path}: {resp.status_code} {resp.text}"


def read(server: BaoServer, path: str) -> dict[str, Any] | None:
    resp = http(server, "GET", f"{MOUNT}/{path}")
    return resp.json()["data"] if resp.status_code == 200 else None


def converged(server: BaoServer, fake: AzureKeyVaultFake, kms: str, key: str) -> None:
    data = read(server, f"key/{key}")
    assert data is not None, "the key is lost"
    record = read(server, f"kms/{kms}/key/{key}")
    assert record is not None, "the distribution is lost"
    vault_versions = [str(v) for v in range(1, data["latest_version"] + 1)]
    assert sorted(record["versions"], key=int) == vault_versions
    azure = fake.versions(record["name"])
    tags = [v.tags.get("vault_version") for v in azure]
    assert sorted(tags, key=int) == vault_versions, f"one Azure version per Vault version: {tags}"
    assert {record["versions"][v.tags["vault_version"]] for v in azure} == {v.version for v in azure}


def arm(file: Path, site: str, n: int) -> None:
    file.write_text(f"{site} {n} {uuid.uuid4().hex}")


def crash_matrix(
    server: BaoServer, failpoint_file: Path, site: str, prepare: Callable[[int], Any],
    act: Callable[[Any], int], repeat: Callable[[Any], None], check: Callable[[Any], None],
) -> int:
    """For n = 1, 2, ...: prepare, arm the nth `site`, act; if the plugin
    aborted, repeat (unless the host already did) and check. Returns how many
    steps crashed."""
    for n in range(1, MAX_STEPS + 1):
        subject = prepare(n)
        arm(failpoint_file, site, n)
        status = act(subject)
        if failpoint_file.exists():
            failpoint_file.unlink()
            assert status in (200, 204), f"{site} {n}: the uncrashed request failed with {status}"
            check(subject)
            return n - 1
        if status in (200, 204):
            # The host relaunched the plugin and sent the request again.
            HOST_RETRIES.append(f"{site} {n}")
        else:
            assert status >= 500, f"{site} {n}: a crash must fail the request, got {status}"
            # The host relaunches the plugin with the next request.
            repeat(subject)
        check(subject)
        wait_for(lambda: len(plugin_pids(server)) == 1, timeout=10)
    raise AssertionError(f"{site}: more than {MAX_STEPS} steps")


@pytest.fixture(scope="module")
def kms(server: BaoServer, fake: AzureKeyVaultFake) -> str:
    must(server, "POST", "kms/az", {"provider": "azurekeyvault", "key_collection": "keyvault-name",
                                    "credentials": fake.credentials})
    return "az"


def new_key(server: BaoServer, versions: int) -> str:
    key = f"c{uuid.uuid4().hex[:10]}"
    must(server, "POST", f"key/{key}", {"type": "ecdsa-p256"})
    for _ in range(versions - 1):
        must(server, "POST", f"key/{key}/rotate")
    return key


@pytest.mark.parametrize("site", ["provider", "storage"])
def test_distribution(server: BaoServer, fake: AzureKeyVaultFake, failpoint_file: Path, kms: str, site: str) -> None:
    body = {"purpose": "sign,verify", "protection": "hsm"}
    steps = crash_matrix(
        server, failpoint_file, site,
        prepare=lambda n: new_key(server, 3),
        act=lambda key: request(server, "POST", f"kms/{kms}/key/{key}", body),
        repeat=lambda key: must(server, "POST", f"kms/{kms}/key/{key}", body),
        check=lambda key: converged(server, fake, kms, key),
    )
    RESULTS[f"distribution/{site}"] = steps
    assert steps >= 3, f"a 3-version distribution has at least 3 {site} steps"


@pytest.mark.parametrize("site", ["provider", "storage"])
def test_rotation(server: BaoServer, fake: AzureKeyVaultFake, failpoint_file: Path, kms: str, site: str) -> None:
    def prepare(n: int) -> str:
        key = new_key(server, 2)
        must(server, "POST", f"kms/{kms}/key/{key}", {"purpose": "sign,verify"})
        return key

    # Repeating a rotation rotates again: convergence means every version
    # Vault has, however many, is in Azure exactly once.
    steps = crash_matrix(
        server, failpoint_file, site, prepare,
        act=lambda key: request(server, "POST", f"key/{key}/rotate"),
        repeat=lambda key: must(server, "POST", f"key/{key}/rotate"),
        check=lambda key: converged(server, fake, kms, key),
    )
    RESULTS[f"rotation/{site}"] = steps
    assert steps >= 1


@pytest.mark.parametrize("site", ["provider", "storage"])
def test_removal(server: BaoServer, fake: AzureKeyVaultFake, failpoint_file: Path, kms: str, site: str) -> None:
    def prepare(n: int) -> tuple[str, str]:
        key = new_key(server, 2)
        must(server, "POST", f"kms/{kms}/key/{key}", {"purpose": "sign,verify"})
        record = read(server, f"kms/{kms}/key/{key}")
        assert record is not None
        return key, record["name"]

    def check(subject: tuple[str, str]) -> None:
        key, name = subject
        assert read(server, f"kms/{kms}/key/{key}") is None, "the record is gone"
        assert name not in fake.keys() and name in fake.deleted_keys(), "deleted in Azure"
        assert read(server, f"key/{key}") is not None, "the key stays in Vault"

    steps = crash_matrix(
        server, failpoint_file, site, prepare,
        act=lambda s: request(server, "DELETE", f"kms/{kms}/key/{s[0]}"),
        repeat=lambda s: must(server, "DELETE", f"kms/{kms}/key/{s[0]}"),
        check=check,
    )
    RESULTS[f"removal/{site}"] = steps
    assert steps >= 1


def test_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert len(RESULTS) == 6, RESULTS
    with capsys.disabled():
        print(f"\ncrash points exercised: {RESULTS} (total {sum(RESULTS.values())}); "
              f"answered by the host's own retry: {HOST_RETRIES or 'none'}")
