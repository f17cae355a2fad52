"""Scheduled rotation (`auto_rotate_period`) under a real OpenBao server.

The server's rollback manager calls the plugin every 60 s, counted from the
server's start; the plugin rotates due keys from that call. The server runs
with the test-only `KEYMGMT_TEST_MIN_AUTO_ROTATE_PERIOD=1`, so keys get a
period of a few seconds, and every check is made once per tick on several
keys at once, so that the whole module waits for two ticks only (about
2.5 minutes):

- a: ecdsa-p256 in the Azure fake, every 5 s: one new version per tick, each
  in Azure (unwrapped there and compared with Vault's public key);
- b: rsa-2048 in the Azure fake (BYOK), every 5 s until the first tick;
  its import at the first tick is made to fail (503 until the plugin's
  retries give up). The read shows the failure; then its period becomes
  1 h (counted from the latest version, as in transit), and the next tick
  imports the version without rotating again;
- c: aes256-gcm96 in LocalStack's KMS, every 5 s: the new version is a new
  KMS key with Vault's material, and the alias moves to it;
- off (no schedule), hour (1 h): never rotated; gone: deleted with its
  schedule before the first tick.

Between the two ticks the plugin process is SIGKILLed and relaunched by the
host: the second tick still rotates a once and leaves b alone.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fakes import AzureKeyVaultFake, FakeKeyVault
from fakes.aws_fault_proxy import AwsFaultProxy
from harness import (
    MOUNT, BaoServer, CliError, cli, http, install_plugin, kill_plugins, plugin_pids, register_private_key,
    stored_material, wait_for,
)
from localstack import LocalStack, assert_symmetric_material
from test_aws import Account, aws_env
from test_azure import DOC_CLIENT, DOC_SECRET, DOC_TENANT, assert_fake_matches, configure_kms, fake_env, vault_public_keys

pytest_plugins = ["aws_fixtures"]

TICK = 60
PERIOD = "5s"


@pytest.fixture(scope="module")
def fake() -> Iterator[AzureKeyVaultFake]:
    with FakeKeyVault(tenant_id=DOC_TENANT, client_id=DOC_CLIENT, client_secret=DOC_SECRET) as started:
        yield started
        for name in started.keys() + started.deleted_keys():
            for version in started.versions(name):
                if version.origin != "generated":  # the fake's own key-exchange keys
                    register_private_key(version.private_key)


@pytest.fixture(scope="module")
def proxy(localstack: LocalStack) -> Iterator[AwsFaultProxy]:
    with AwsFaultProxy(localstack.endpoint) as started:
        yield started


class Server:
    """The module's server and when it started: ticks come at +60 s, +120 s, ..."""

    def __init__(self, bao: BaoServer, started: float) -> None:
        self.bao = bao
        self.started = started

    def until_tick(self, n: int) -> float:
        return self.started + n * TICK - time.monotonic()


@pytest.fixture(scope="module")
def server(fake: AzureKeyVaultFake, localstack: LocalStack,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {**aws_env(), **fake_env(fake), "KEYMGMT_TEST_MIN_AUTO_ROTATE_PERIOD": "1"}
    started = time.monotonic()
    srv = BaoServer(tmp_path_factory.mktemp("rotation"), env=env, raw_storage=True)
    try:
        install_plugin(srv)
        yield Server(srv, started)
    finally:
        srv.stop()
        kill_plugins(srv)


def read(server: BaoServer, path: str) -> dict[str, Any]:
    """`vault read -format=json`, retried while the host relaunches a killed plugin."""
    for _ in range(40):
        try:
            return json.loads(cli(server, "read", "-format=json", f"{MOUNT}/{path}").stdout)["data"]
        except CliError as error:
            if "Unavailable" not in error.result.stderr and "connection" not in error.result.stderr:
                raise
            time.sleep(0.25)
    raise AssertionError(f"{path}: the plugin did not come back")


def latest(server: BaoServer, key: str) -> int:
    return int(read(server, f"key/{key}")["latest_version"])


def parse_time(text: str) -> datetime.datetime:
    # Go's RFC 3339 with nanoseconds; Python takes microseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(text)


def schedule_entries(server: BaoServer) -> list[str]:
    """The plugin's schedule index as stored, read through sys/raw: `<due>-<key>` leaves."""
    uuid_ = http(server, "GET", "sys/mounts").json()["data"][f"{MOUNT}/"]["uuid"]
    base = f"sys/raw/logical/{uuid_}/schedule/"
    resp = http(server, "LIST", base)
    if resp.status_code == 404:
        return []
    leaves = []
    for bucket in resp.json()["data"]["keys"]:
        leaves += http(server, "LIST", base + bucket).json()["data"]["keys"]
    return leaves


def rotations_logged(server: BaoServer, key: str) -> int:
    return len(re.findall(rf"rotated the key on its schedule: .*\bkey={re.escape(key)}(\s|$)", server.log_text(),
                          re.M))


def test_period_is_checked_and_read_as_transit_reads_it(server: Server, fresh_server: Any) -> None:
    srv = server.bao
    key = f"v-{uuid.uuid4().hex[:8]}"
    for value, message in [("abc", 'invalid value for field "auto_rotate_period"'),
                           ("-1", "auto_rotate_period must not be negative"),
                           ("1d2h", 'invalid value for field "auto_rotate_period"')]:
        result = cli(srv, "write", f"{MOUNT}/key/{key}", f"auto_rotate_period={value}", check=False)
        assert result.returncode != 0 and "Code: 400" in result.stderr, result.stderr
        assert message in result.stderr, result.stderr
        assert http(srv, "GET", f"{MOUNT}/key/{key}").status_code == 404, "nothing was created"
    # Without the test-only setting, the minimum is an hour, as in transit.
    production = fresh_server()
    result = cli(production, "write", f"{MOUNT}/key/{key}", "auto_rotate_period=59m", check=False)
    assert "Code: 400" in result.stderr, result.stderr
    assert "auto_rotate_period must be 0 to disable or at least 1h, got 59m" in result.stderr, result.stderr
    cli(production, "write", f"{MOUNT}/key/{key}", "auto_rotate_period=1h")
    cli(srv, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96", "auto_rotate_period=90m")
    cli(srv, "secrets", "enable", "transit")
    cli(srv, "write", "-f", "transit/keys/t", "auto_rotate_period=90m")
    ours, theirs = read(srv, f"key/{key}"), json.loads(
        cli(srv, "read", "-format=json", "transit/keys/t").stdout)["data"]
    assert ours["auto_rotate_period"] == theirs["auto_rotate_period"] == 5400
    # The CLI shows both as a duration.
    for path in (f"{MOUNT}/key/{key}", "transit/keys/t"):
        assert re.search(r"^auto_rotate_period\s+1h30m$", cli(srv, "read", path).stdout, re.M), path
    created = parse_time(ours["versions"]["1"]["creation_time"])
    assert parse_time(ours["next_rotation_time"]) - created == datetime.timedelta(minutes=90)
    for value, seconds in [("1d", 86400), ("7200", 7200), ("0", 0)]:
        cli(srv, "write", f"{MOUNT}/key/{key}", f"auto_rotate_period={value}")
        data = read(srv, f"key/{key}")
        assert data["auto_rotate_period"] == seconds
        assert ("next_rotation_time" in data) == (seconds > 0)


def test_keys_rotate_on_the_hosts_ticks(server: Server, fake: AzureKeyVaultFake, localstack: LocalStack,
                                        proxy: AwsFaultProxy) -> None:
    srv = server.bao
    run = uuid.uuid4().hex[:6]
    a, b, c, off, hour, gone = (f"{n}-{run}" for n in ("a", "b", "c", "off", "hour", "gone"))
    azure, aws = f"az-{run}", f"aws-{run}"

    # -- before the first tick ----------------------------------------------------------
    configure_kms(srv, fake, azure)
    account = Account(localstack)
    cli(srv, "write", f"{MOUNT}/kms/{aws}", "provider=awskms", "key_collection=us-east-1",
        f"credentials=access_key={account.access_key}", f"credentials=secret_key={account.secret_key}",
        f"credentials=endpoint={proxy.endpoint}")
    cli(srv, "write", f"{MOUNT}/key/{a}", "type=ecdsa-p256")
    cli(srv, "write", f"{MOUNT}/key/{b}", "type=rsa-2048")
    cli(srv, "write", f"{MOUNT}/key/{c}", "type=aes256-gcm96")
    cli(srv, "write", f"{MOUNT}/kms/{azure}/key/{a}", "purpose=sign,verify", "protection=software")
    cli(srv, "write", f"{MOUNT}/kms/{azure}/key/{b}", "purpose=encrypt,decrypt", "protection=hsm")
    cli(srv, "write", f"{MOUNT}/kms/{aws}/key/{c}", "purpose=encrypt,decrypt")
    for key in (a, b, c):
        cli(srv, "write", f"{MOUNT}/key/{key}", f"auto_rotate_period={PERIOD}")
    cli(srv, "write", f"{MOUNT}/key/{off}", "type=aes256-gcm96")
    cli(srv, "write", f"{MOUNT}/key/{hour}", "type=aes256-gcm96", "auto_rotate_period=1h")
    cli(srv, "write", f"{MOUNT}/key/{gone}", "type=aes256-gcm96", f"auto_rotate_period={PERIOD}",
        "deletion_allowed=true")
    assert any(leaf.endswith(f"-{gone}") for leaf in schedule_entries(srv))
    cli(srv, "delete", f"{MOUNT}/key/{gone}")
    assert not any(leaf.endswith(f"-{gone}") for leaf in schedule_entries(srv)), "no schedule left behind"

    data = read(srv, f"key/{a}")
    assert data["auto_rotate_period"] == 5
    assert (parse_time(data["next_rotation_time"]) - parse_time(data["versions"]["1"]["creation_time"])
            == datetime.timedelta(seconds=5))
    assert re.search(r"^auto_rotate_period\s+5s$", cli(srv, "read", f"{MOUNT}/key/{a}").stdout, re.M)
    b_name = read(srv, f"kms/{azure}/key/{b}")["name"]
    # b's import at the first tick fails: 503 until the plugin's retries give up.
    fake.inject("PUT", rf"^/keys/{re.escape(b_name)}$", "503", times=8)
    assert server.until_tick(1) > 3, "setup took until the first tick"
    assert latest(srv, a) == 1

    # -- the first tick ----------------------------------------------------------------
    assert wait_for(lambda: latest(srv, a) == 2, timeout=server.until_tick(1) + 20, interval=0.5)
    tick1 = datetime.datetime.now(datetime.timezone.utc)
    # The pending push is recorded before the push starts; wait for its failure.
    assert wait_for(lambda: read(srv, f"key/{b}").get("pending_pushes", {}).get(azure, {}).get("failed_attempts"),
                    timeout=30, interval=0.5)
    assert wait_for(lambda: "pending_pushes" not in read(srv, f"key/{a}"), timeout=30, interval=0.5)
    assert wait_for(lambda: "2" in read(srv, f"kms/{aws}/key/{c}")["versions"], timeout=30, interval=0.5)
    assert [latest(srv, k) for k in (a, b, c, off, hour)] == [2, 2, 2, 1, 1]
    assert_fake_matches(fake, srv, azure, a, vault_public_keys(srv, a), protection="software",
                        purposes={"sign", "verify"})
    # b: rotated in Vault, not in Azure; the read says why, when, and what is missing.
    b_data = read(srv, f"key/{b}")
    assert len(fake.versions(b_name)) == 1
    pending = b_data["pending_pushes"]
    assert list(pending) == [azure], pending
    assert pending[azure]["missing_versions"] == [2]
    assert pending[azure]["failed_attempts"] == 1
    assert "503" in pending[azure]["last_error"] or "Unavailable" in pending[azure]["last_error"], pending
    attempt = parse_time(pending[azure]["last_attempt_time"])
    assert tick1 - datetime.timedelta(seconds=15) <= attempt <= datetime.datetime.now(datetime.timezone.utc)
    # c: version 2 is a new KMS key holding Vault's material, and the alias moved to it.
    record = read(srv, f"kms/{aws}/key/{c}")
    assert_symmetric_material(account.kms(), record["versions"]["2"], stored_material(srv, c, 2))
    assert account.alias_target(f"alias/hashicorp/{record['name']}") == record["versions"]["2"]
    # b from now on every hour, counted from version 2's creation.
    cli(srv, "write", f"{MOUNT}/key/{b}", "auto_rotate_period=1h")
    b_data = read(srv, f"key/{b}")
    assert (parse_time(b_data["next_rotation_time"]) - parse_time(b_data["versions"]["2"]["creation_time"])
            == datetime.timedelta(hours=1))

    # -- a restart between the ticks ---------------------------------------------------
    [pid] = plugin_pids(srv)
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: pid not in plugin_pids(srv), timeout=5)
    assert latest(srv, a) == 2, "the relaunched plugin did not rotate on its own"
    assert plugin_pids(srv) and plugin_pids(srv) != [pid]
    assert server.until_tick(2) > 3

    # -- the second tick ---------------------------------------------------------------
    assert wait_for(lambda: latest(srv, a) == 3, timeout=server.until_tick(2) + 20, interval=0.5)
    assert wait_for(lambda: "pending_pushes" not in read(srv, f"key/{b}"), timeout=30, interval=0.5)
    assert wait_for(lambda: "3" in read(srv, f"kms/{aws}/key/{c}")["versions"], timeout=30, interval=0.5)
    assert [latest(srv, k) for k in (a, b, c, off, hour)] == [3, 2, 3, 1, 1]
    # b's version 2 reached Azure by the retry, once, and is current there.
    publics = vault_public_keys(srv, b)
    stored = assert_fake_matches(fake, srv, azure, b, publics, protection="hsm", purposes={"encrypt", "decrypt"})
    assert fake.current_version(b_name).version == stored[-1].version
    assert_fake_matches(fake, srv, azure, a, vault_public_keys(srv, a), protection="software",
                        purposes={"sign", "verify"})
    record = read(srv, f"kms/{aws}/key/{c}")
    assert_symmetric_material(account.kms(), record["versions"]["3"], stored_material(srv, c, 3))
    assert account.alias_target(f"alias/hashicorp/{record['name']}") == record["versions"]["3"]
    # One rotation per key per tick, across the restart: the plugin's own log agrees.
    assert [rotations_logged(srv, k) for k in (a, b, c, off, hour)] == [2, 1, 2, 0, 0]
    leaves = schedule_entries(srv)
    for key in (a, b, c, hour):
        assert sum(leaf.endswith(f"-{key}") for leaf in leaves) == 1, (key, leaves)
