"""The awskms provider under a real OpenBao server, against LocalStack's KMS.

Every provider is configured with the documented credentials map, its
`endpoint` pointing at a per-test fault proxy in front of LocalStack, and
its own 12-digit access key id, which gives each test an AWS account of its
own (LocalStack maps such key ids to that account), so counting keys and
aliases is exact. After each step the state is read from LocalStack with
boto3, never through the plugin:

- key state, origin, spec, usage, tags and alias target;
- RSA and ECDSA: GetPublicKey equals the public key `vault read` shows, and a
  KMS signature (or decryption) checks out with it, since LocalStack also
  answers GetPublicKey for a key whose material was never imported;
- AES: the material in LocalStack is the material Vault stored, read through
  the server's `sys/raw` and compared by AES-GCM in both directions
  (`localstack.assert_symmetric_material`).

The server log, at trace level, is searched for every secret the module used.
"""

from __future__ import annotations

import base64
import datetime
import json
import random
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from fakes.aws_fault_proxy import AwsFaultProxy
from fakes.tls import FakeCA
from harness import (
    MOUNT, BaoServer, cli, http, install_plugin, kill_plugins, read_key, register_secret, stored_material,
)
from localstack import LocalStack, assert_symmetric_material

pytest_plugins = ["aws_fixtures"]

REGION = "us-east-1"
SECRETS: list[str] = []
SERVERS: list[BaoServer] = []


def aws_env(**extra: str | None) -> dict[str, str | None]:
    """Nothing of the machine's AWS set-up reaches the plugin, and nothing leaves 127.0.0.1."""
    return {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": None,
        "AWS_SECRET_ACCESS_KEY": None,
        "AWS_SESSION_TOKEN": None,
        "AWS_PROFILE": None,
        "AWS_KMS_ENDPOINT": None,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "KEYMGMT_AWS_RETRY_BASE_MS": "20",
        "KEYMGMT_AWS_PENDING_WINDOW_DAYS": "7",
        "KEYMGMT_LOG_LEVEL": "trace",
        **extra,
    }


@pytest.fixture(scope="module")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., BaoServer]]:
    started: list[BaoServer] = []

    def start(**extra_env: str | None) -> BaoServer:
        srv = BaoServer(tmp_path_factory.mktemp("aws"), env=aws_env(**extra_env), raw_storage=True)
        started.append(srv)
        SERVERS.append(srv)
        install_plugin(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
        kill_plugins(srv)


@pytest.fixture(scope="module")
def server(start_server: Callable[..., BaoServer]) -> BaoServer:
    return start_server()


class Account:
    """An AWS account of the test's own in LocalStack, and its credentials."""

    def __init__(self, localstack: LocalStack) -> None:
        self.access_key = "".join(random.choice("0123456789") for _ in range(12))
        self.secret_key = f"s3cr3t/{uuid.uuid4().hex}"
        SECRETS.append(register_secret(self.secret_key))
        self.localstack = localstack

    def kms(self, region: str = REGION) -> Any:
        """boto3 straight to LocalStack (not through the proxy)."""
        return self.localstack.boto3_client(region, access_key=self.access_key, secret_key=self.secret_key)

    def keys(self, region: str = REGION) -> list[dict[str, Any]]:
        """Every KMS key of the account in `region`, described, with its tags."""
        kms = self.kms(region)
        out = []
        for page in kms.get_paginator("list_keys").paginate():
            for entry in page["Keys"]:
                meta = kms.describe_key(KeyId=entry["KeyId"])["KeyMetadata"]
                tags = kms.list_resource_tags(KeyId=entry["KeyId"])["Tags"]
                meta["Tags"] = {t["TagKey"]: t["TagValue"] for t in tags}
                out.append(meta)
        return out

    def usable(self, region: str = REGION) -> list[dict[str, Any]]:
        return [k for k in self.keys(region) if k["KeyState"] == "Enabled"]

    def alias_target(self, alias: str, region: str = REGION) -> str | None:
        for page in self.kms(region).get_paginator("list_aliases").paginate():
            for entry in page["Aliases"]:
                if entry["AliasName"] == alias:
                    return entry.get("TargetKeyId")
        return None


@pytest.fixture
def account(localstack: LocalStack) -> Account:
    return Account(localstack)


_counter = iter(range(10**6))


@pytest.fixture
def key() -> str:
    return f"key{next(_counter)}-{time.monotonic_ns() % 10**6}"


def configure(server: BaoServer, name: str, account: Account, proxy: AwsFaultProxy, region: str = REGION) -> None:
    cli(
        server, "write", f"{MOUNT}/kms/{name}",
        "provider=awskms", f"key_collection={region}",
        f"credentials=access_key={account.access_key}",
        f"credentials=secret_key={account.secret_key}",
        f"credentials=endpoint={proxy.endpoint}",
    )


def distribution(server: BaoServer, kms: str, key: str) -> dict[str, Any]:
    return json.loads(cli(server, "read", "-format=json", f"{MOUNT}/kms/{kms}/key/{key}").stdout)["data"]


def check_material(server: BaoServer, account: Account, key: str, version: int, key_id: str, region: str = REGION) -> None:
    """The KMS key holds exactly Vault's material for `version`, checked without the plugin."""
    data = read_key(server, key)
    kms = account.kms(region)
    if data["type"] == "aes256-gcm96":
        assert_symmetric_material(kms, key_id, stored_material(server, key, version))
        return
    vault_pem = data["versions"][str(version)]["public_key"]
    ours = serialization.load_pem_public_key(vault_pem.encode())
    theirs = serialization.load_der_public_key(kms.get_public_key(KeyId=key_id)["PublicKey"])
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert theirs.public_bytes(*spki) == ours.public_bytes(*spki), "GetPublicKey differs from Vault's key"
    usage = kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyUsage"]
    message = uuid.uuid4().bytes
    if usage == "SIGN_VERIFY":
        if isinstance(ours, rsa.RSAPublicKey):
            sig = kms.sign(KeyId=key_id, Message=message, MessageType="RAW", SigningAlgorithm="RSASSA_PSS_SHA_256")
            ours.verify(sig["Signature"], message, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
        else:
            assert isinstance(ours, ec.EllipticCurvePublicKey)
            algorithm, digest = {256: ("ECDSA_SHA_256", hashes.SHA256()), 384: ("ECDSA_SHA_384", hashes.SHA384()),
                                 521: ("ECDSA_SHA_512", hashes.SHA512())}[ours.curve.key_size]
            sig = kms.sign(KeyId=key_id, Message=message, MessageType="RAW", SigningAlgorithm=algorithm)
            ours.verify(sig["Signature"], message, ec.ECDSA(digest))
    else:
        assert isinstance(ours, rsa.RSAPublicKey)
        ciphertext = ours.encrypt(message, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
        plain = kms.decrypt(KeyId=key_id, CiphertextBlob=ciphertext, EncryptionAlgorithm="RSAES_OAEP_SHA_256")
        assert plain["Plaintext"] == message


def check_version_key(meta: dict[str, Any], key: str, version: int, record: dict[str, Any], usage: str, spec: str) -> None:
    assert meta["Origin"] == "EXTERNAL"
    assert meta["KeySpec"] == spec
    assert meta["KeyUsage"] == usage
    tags = meta["Tags"]
    assert tags["keymgmt:key"] == key
    assert tags["keymgmt:version"] == str(version)
    assert tags["keymgmt:distribution"] == record["name"]
    assert len(tags["keymgmt:distribution-id"]) == 32


# -- the documented workflow --------------------------------------------------------


def test_documented_workflow_with_aes(server: BaoServer, account: Account, kms_proxy: AwsFaultProxy, key: str) -> None:
    kms = f"aws-{key}"
    cli(server, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96")
    configure(server, kms, account, kms_proxy)
    assert json.loads(cli(server, "read", "-format=json", f"{MOUNT}/kms/{kms}").stdout)["data"] == {
        "provider": "awskms", "key_collection": REGION}
    cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=encrypt,decrypt", "protection=hsm")

    record = distribution(server, kms, key)
    assert record["purpose"] == "decrypt,encrypt"
    assert record["protection"] == "hsm"
    assert record["name"] == f"{key}-{record['name'].rsplit('-', 1)[1]}"
    alias = f"alias/hashicorp/{record['name']}"
    v1 = record["versions"]["1"]
    [meta] = account.keys()
    assert meta["KeyId"] == v1 and meta["KeyState"] == "Enabled"
    check_version_key(meta, key, 1, record, "ENCRYPT_DECRYPT", "SYMMETRIC_DEFAULT")
    assert account.alias_target(alias) == v1
    check_material(server, account, key, 1, v1)

    # Rotate: a new KMS key for version 2, the alias moves to it.
    cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    record = distribution(server, kms, key)
    v2 = record["versions"]["2"]
    assert v2 != v1
    assert account.alias_target(alias) == v2
    assert {k["KeyId"] for k in account.usable()} == {v1, v2}
    check_material(server, account, key, 2, v2)

    # min_enabled_version disables and re-enables.
    cli(server, "write", f"{MOUNT}/key/{key}", "min_enabled_version=2")
    states = {k["KeyId"]: k["KeyState"] for k in account.keys()}
    assert states == {v1: "Disabled", v2: "Enabled"}
    cli(server, "write", f"{MOUNT}/key/{key}", "min_enabled_version=0")
    assert {k["KeyState"] for k in account.keys()} == {"Enabled"}

    # Remove: every version's key is scheduled for deletion, the alias goes.
    out = cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{key}")
    assert out.stdout.startswith("Success! Data deleted")
    keys = account.keys()
    assert {k["KeyState"] for k in keys} == {"PendingDeletion"}
    # The documented waiting period setting: 7 days here (LocalStack reports
    # the deletion date, not the window).
    now = datetime.datetime.now(datetime.timezone.utc)
    for k in keys:
        days = (k["DeletionDate"] - now).total_seconds() / 86400
        assert 6.9 < days < 7.1, k
    assert account.alias_target(alias) is None
    assert http(server, "GET", f"{MOUNT}/kms/{kms}/key/{key}").status_code == 404

    # Redistribute: new keys under a new distribution.
    time.sleep(1.1)
    cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=encrypt,decrypt")
    again = distribution(server, kms, key)
    assert again["name"] != record["name"]
    assert len(account.usable()) == 2
    for version in (1, 2):
        check_material(server, account, key, version, again["versions"][str(version)])
    assert account.alias_target(f"alias/hashicorp/{again['name']}") == again["versions"]["2"]
    cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{key}")
    assert account.usable() == []


@pytest.mark.parametrize(
    ("key_type", "purpose", "usage", "spec"),
    [
        ("rsa-2048", "encrypt,decrypt", "ENCRYPT_DECRYPT", "RSA_2048"),
        ("rsa-3072", "sign,verify", "SIGN_VERIFY", "RSA_3072"),
        ("rsa-4096", "sign,verify", "SIGN_VERIFY", "RSA_4096"),
        ("ecdsa-p256", "sign,verify", "SIGN_VERIFY", "ECC_NIST_P256"),
        ("ecdsa-p384", "sign,verify", "SIGN_VERIFY", "ECC_NIST_P384"),
        ("ecdsa-p521", "sign,verify", "SIGN_VERIFY", "ECC_NIST_P521"),
    ],
)
def test_asymmetric_types_and_disabled_versions(
    server: BaoServer, account: Account, kms_proxy: AwsFaultProxy, key: str,
    key_type: str, purpose: str, usage: str, spec: str,
) -> None:
    """Types Vault never offered for AWS; version 1 stays below min_enabled_version,
    so its key is created but never gets material (never usable)."""
    kms = f"aws-{key}"
    cli(server, "write", f"{MOUNT}/key/{key}", f"type={key_type}")
    cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    cli(server, "write", f"{MOUNT}/key/{key}", "min_enabled_version=2")
    configure(server, kms, account, kms_proxy)
    cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", f"purpose={purpose}")
    record = distribution(server, kms, key)
    by_id = {k["KeyId"]: k for k in account.keys()}
    v1, v2 = record["versions"]["1"], record["versions"]["2"]
    assert set(by_id) == {v1, v2}
    assert by_id[v1]["KeyState"] == "PendingImport", "a disabled version never gets material"
    assert by_id[v2]["KeyState"] == "Enabled"
    for version, key_id in ((1, v1), (2, v2)):
        check_version_key(by_id[key_id], key, version, record, usage, spec)
    assert kms_proxy.counts()["ImportKeyMaterial"] == 1
    check_material(server, account, key, 2, v2)

    # Enabling version 1 brings its material in then.
    cli(server, "write", f"{MOUNT}/key/{key}", "min_enabled_version=1")
    assert {k["KeyState"] for k in account.keys()} == {"Enabled"}
    check_material(server, account, key, 1, v1)
    cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{key}")
    assert account.usable() == []


# -- refused before any call -----------------------------------------------------------


@pytest.mark.parametrize(
    ("key_type", "args", "field"),
    [
        ("aes256-gcm96", ["purpose=sign"], "purpose"),
        ("aes256-gcm96", ["purpose=encrypt"], "purpose"),
        ("rsa-2048", ["purpose=encrypt,sign"], "purpose"),
        ("ecdsa-p256", ["purpose=decrypt"], "purpose"),
        ("rsa-2048", ["purpose=wrap"], "purpose"),
        ("aes256-gcm96", ["purpose=encrypt,decrypt", "protection=software"], "protection"),
    ],
)
def test_unsupported_requests_are_refused_before_any_call(
    server: BaoServer, account: Account, kms_proxy: AwsFaultProxy, key: str,
    key_type: str, args: list[str], field: str,
) -> None:
    kms = f"aws-{key}"
    cli(server, "write", f"{MOUNT}/key/{key}", f"type={key_type}")
    configure(server, kms, account, kms_proxy)
    bad = cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", *args, check=False)
    assert bad.returncode == 2, bad.stderr
    assert f"* {field}: " in bad.stderr or f"{field}:" in bad.stderr, bad.stderr
    assert kms_proxy.calls() == [], "nothing reached AWS"
    assert http(server, "GET", f"{MOUNT}/kms/{kms}/key/{key}").status_code == 404, "no record"
    cli(server, "write", f"{MOUNT}/key/{key}", "deletion_allowed=true")
    cli(server, "delete", f"{MOUNT}/key/{key}")
    cli(server, "delete", f"{MOUNT}/kms/{kms}")


def test_settings_are_refused_at_write(server: BaoServer, account: Account, key: str) -> None:
    kms = f"aws-{key}"
    cases = [
        (["key_collection=Mars"], "key_collection"),
        (["key_collection=us-east-1", "credentials=endpoint=http://kms.example.com"], "credentials.endpoint"),
        (["key_collection=us-east-1", f"credentials=access_key={account.access_key}"], "credentials.secret_key"),
        (["key_collection=us-east-1", f"credentials={account.secret_key}=1"], "credentials"),
    ]
    for args, field in cases:
        bad = cli(server, "write", f"{MOUNT}/kms/{kms}", "provider=awskms", *args, check=False)
        assert bad.returncode == 2 and f"{field}: " in bad.stderr, bad.stderr
        assert account.secret_key not in bad.stderr
        assert http(server, "GET", f"{MOUNT}/kms/{kms}").status_code == 404
    bad = cli(server, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96", "replica_regions=eu-west-1,moon-1", check=False)
    assert bad.returncode == 2 and "replica_regions: " in bad.stderr, bad.stderr
    assert http(server, "GET", f"{MOUNT}/key/{key}").status_code == 404


# -- faults at every call site ------------------------------------------------------------

# The KMS actions a distribution, a rotation, a min_enabled_version change and
# a removal make, in that order.
CALL_SITES = [
    "CreateKey", "GetParametersForImport", "ImportKeyMaterial", "UpdateAlias", "CreateAlias",
    "DescribeKey", "DisableKey", "EnableKey", "ScheduleKeyDeletion", "DeleteAlias",
]
FAULTS = ["throttle", "500", "dependency-timeout", "lost"]


def lifecycle(server: BaoServer, kms: str, key: str) -> dict[str, Any]:
    """Distribute a 2-version key, rotate, disable and re-enable version 1;
    returns the distribution before the removal, which the caller does."""
    cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=encrypt,decrypt")
    cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    cli(server, "write", f"{MOUNT}/key/{key}", "min_enabled_version=2")
    cli(server, "write", f"{MOUNT}/key/{key}", "min_enabled_version=1")
    return distribution(server, kms, key)


@pytest.mark.parametrize("site", CALL_SITES)
def test_every_fault_at_each_call_site_is_retried_without_duplicates(
    server: BaoServer, account: Account, kms_proxy: AwsFaultProxy, key: str, site: str,
) -> None:
    """The four faults are queued at one call site and hit its first calls one
    after the other (a throttled attempt is followed by a 500, then a
    timeout, then a lost answer), all within one logical call's retries."""
    kms = f"aws-{key}"
    cli(server, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96")
    cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    configure(server, kms, account, kms_proxy)
    for fault in FAULTS:
        kms_proxy.add_fault(site, fault)
    record = lifecycle(server, kms, key)
    cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{key}")
    injected = [c.fault for c in kms_proxy.calls(site) if c.fault]
    assert injected == FAULTS, f"faults injected at {site}: {injected}"
    keys = account.keys()
    assert sorted(k["KeyId"] for k in keys) == sorted(record["versions"].values()), (
        f"exactly one KMS key per version, no orphan: {keys}")
    assert {k["KeyState"] for k in keys} == {"PendingDeletion"}
    assert account.alias_target(f"alias/hashicorp/{record['name']}") is None


def test_an_outage_fails_cleanly_and_the_repeat_completes(
    server: BaoServer, account: Account, kms_proxy: AwsFaultProxy, key: str,
) -> None:
    kms = f"aws-{key}"
    cli(server, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96")
    cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    configure(server, kms, account, kms_proxy)
    # The second version's import answers are all lost: the material is in,
    # the plugin never hears it.
    kms_proxy.add_fault("ImportKeyMaterial", "lost", times=50, skip=1)
    kms_proxy.add_fault("DescribeKey", "500", times=50)
    started = time.monotonic()
    bad = cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=encrypt,decrypt", check=False)
    elapsed = time.monotonic() - started
    assert bad.returncode == 2 and "Code: 502" in bad.stderr, bad.stderr
    assert "again resumes" in bad.stderr, bad.stderr
    assert elapsed < 60, f"gave up after {elapsed:.0f} s, within the server's 90 s"
    partial = distribution(server, kms, key)
    assert list(partial["versions"]) == ["1"]
    kms_proxy.faults.clear()
    cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=encrypt,decrypt")
    record = distribution(server, kms, key)
    assert sorted(k["KeyId"] for k in account.keys()) == sorted(record["versions"].values())
    for version in (1, 2):
        check_material(server, account, key, version, record["versions"][str(version)])
    cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{key}")


@pytest.mark.parametrize(
    ("site", "permission", "recorded"),
    [
        ("CreateKey", "kms:CreateKey", False),
        ("ImportKeyMaterial", "kms:ImportKeyMaterial", True),
        ("UpdateAlias", "kms:UpdateAlias", True),
    ],
)
def test_access_denied_names_the_permission(
    server: BaoServer, account: Account, kms_proxy: AwsFaultProxy, key: str,
    site: str, permission: str, recorded: bool,
) -> None:
    kms = f"aws-{key}"
    cli(server, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96")
    configure(server, kms, account, kms_proxy)
    kms_proxy.add_fault(site, "access-denied")
    bad = cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=encrypt,decrypt", check=False)
    assert bad.returncode == 2 and "Code: 400" in bad.stderr, bad.stderr
    assert permission in bad.stderr, bad.stderr
    has_record = http(server, "GET", f"{MOUNT}/kms/{kms}/key/{key}").status_code == 200
    assert has_record == recorded, "a refusal before anything was created leaves no record"
    # Granted: the same command completes, reusing what was created.
    cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=encrypt,decrypt")
    record = distribution(server, kms, key)
    assert [k["KeyId"] for k in account.keys()] == [record["versions"]["1"]]
    assert account.alias_target(f"alias/hashicorp/{record['name']}") == record["versions"]["1"]
    cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{key}")


# -- multi-Region ---------------------------------------------------------------------


def test_replicate_to_replica_regions(server: BaoServer, account: Account, kms_proxy: AwsFaultProxy, key: str) -> None:
    kms = f"aws-{key}"
    replicas = ["us-west-2", "eu-west-1"]
    cli(server, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96", f"replica_regions={','.join(replicas)}")
    assert read_key(server, key)["replica_regions"] == replicas
    configure(server, kms, account, kms_proxy)
    cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=encrypt,decrypt")
    [primary] = account.keys()
    assert primary["MultiRegion"] is True and primary["KeyId"].startswith("mrk-")
    for region in replicas:
        assert account.keys(region) == []
    # A lost answer of ReplicateKey: the repeat inside the call finds the
    # replica there (AlreadyExists) and imports into it.
    kms_proxy.add_fault("ReplicateKey", "lost")
    out = cli(server, "write", "-f", f"{MOUNT}/kms/{kms}/key/{key}/replicate")
    assert out.stdout.startswith("Success!")
    assert [c.fault for c in kms_proxy.calls("ReplicateKey")][:1] == ["lost"]
    # Idempotent.
    cli(server, "write", "-f", f"{MOUNT}/kms/{kms}/key/{key}/replicate")
    record = distribution(server, kms, key)
    for region in replicas:
        [replica] = account.keys(region)
        assert replica["KeyId"] == record["versions"]["1"]
        assert replica["MultiRegionConfiguration"]["MultiRegionKeyType"] == "REPLICA"
        assert replica["KeyState"] == "Enabled"
        check_material(server, account, key, 1, replica["KeyId"], region)
    # Rotation reaches the replicas; min_enabled_version too.
    cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    record = distribution(server, kms, key)
    for region in replicas:
        ids = {k["KeyId"]: k["KeyState"] for k in account.keys(region)}
        assert set(ids) == set(record["versions"].values()), region
        check_material(server, account, key, 2, record["versions"]["2"], region)
    cli(server, "write", f"{MOUNT}/key/{key}", "min_enabled_version=2")
    for region in [REGION, *replicas]:
        states = {k["KeyId"]: k["KeyState"] for k in account.keys(region)}
        assert states[record["versions"]["1"]] == "Disabled", region
        assert states[record["versions"]["2"]] == "Enabled", region
    # Removal deletes the replicas too.
    cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{key}")
    for region in [REGION, *replicas]:
        assert {k["KeyState"] for k in account.keys(region)} == {"PendingDeletion"}, region
    # Replicas are fixed at creation, and a key without them cannot replicate.
    bad = cli(server, "write", f"{MOUNT}/key/{key}", "replica_regions=ap-south-1", check=False)
    assert bad.returncode == 2 and "cannot be changed" in bad.stderr
    plain = f"{key}-plain"
    cli(server, "write", f"{MOUNT}/key/{plain}", "type=aes256-gcm96")
    cli(server, "write", f"{MOUNT}/kms/{kms}/key/{plain}", "purpose=encrypt,decrypt")
    bad = cli(server, "write", "-f", f"{MOUNT}/kms/{kms}/key/{plain}/replicate", check=False)
    assert bad.returncode == 2 and "does not have replica_regions" in bad.stderr, bad.stderr
    cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{plain}")


# -- credentials ---------------------------------------------------------------------


def test_credentials_from_the_environment_and_their_precedence(
    start_server: Callable[..., BaoServer], localstack: LocalStack, kms_proxy: AwsFaultProxy, key: str,
) -> None:
    env_account, map_account = Account(localstack), Account(localstack)
    srv = start_server(
        AWS_ACCESS_KEY_ID=env_account.access_key,
        AWS_SECRET_ACCESS_KEY=env_account.secret_key,
        AWS_KMS_ENDPOINT=kms_proxy.endpoint,
    )
    cli(srv, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96")
    # No credentials map: the environment's account and endpoint.
    cli(srv, "write", f"{MOUNT}/kms/from-env", "provider=awskms", f"key_collection={REGION}")
    cli(srv, "write", f"{MOUNT}/kms/from-env/key/{key}", "purpose=encrypt,decrypt")
    assert len(env_account.usable()) == 1
    # The map takes precedence over the environment.
    cli(srv, "write", f"{MOUNT}/kms/from-map", "provider=awskms", f"key_collection={REGION}",
        f"credentials=access_key={map_account.access_key}", f"credentials=secret_key={map_account.secret_key}")
    cli(srv, "write", f"{MOUNT}/kms/from-map/key/{key}", "purpose=encrypt,decrypt")
    assert len(map_account.usable()) == 1 and len(env_account.usable()) == 1
    for kms in ("from-env", "from-map"):
        cli(srv, "delete", f"{MOUNT}/kms/{kms}/key/{key}")


class TlsTerminator:
    """HTTPS on 127.0.0.1 with a certificate from a private CA, relaying bytes
    to `upstream` (the fault proxy): an endpoint the plugin trusts only
    through KEYMGMT_AWS_CA_FILE."""

    def __init__(self, upstream_port: int, directory: Path) -> None:
        self.ca = FakeCA("keymgmt AWS endpoint test CA")
        self.ca_path = directory / "aws-ca.pem"
        self.ca_path.write_bytes(self.ca.cert_pem())
        self.context = self.ca.server_context(directory, ["localhost"], ["127.0.0.1"])
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(raw,), daemon=True).start()

    def _relay(self, raw: socket.socket) -> None:
        try:
            client = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)

    def close(self) -> None:
        self.listener.close()


def test_extra_ca_certificates_are_trusted_through_the_setting(
    start_server: Callable[..., BaoServer], localstack: LocalStack, kms_proxy: AwsFaultProxy,
    tmp_path: Path, key: str,
) -> None:
    tls = TlsTerminator(kms_proxy.port, tmp_path)
    try:
        endpoint = f"https://127.0.0.1:{tls.port}"
        account = Account(localstack)
        untrusting = start_server()
        cli(untrusting, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96")
        cli(untrusting, "write", f"{MOUNT}/kms/tls", "provider=awskms", f"key_collection={REGION}",
            f"credentials=access_key={account.access_key}", f"credentials=secret_key={account.secret_key}",
            f"credentials=endpoint={endpoint}")
        started = time.monotonic()
        bad = cli(untrusting, "write", f"{MOUNT}/kms/tls/key/{key}", "purpose=encrypt,decrypt", check=False)
        assert bad.returncode == 2 and "Code: 400" in bad.stderr and "KEYMGMT_AWS_CA_FILE" in bad.stderr, bad.stderr
        assert time.monotonic() - started < 10, "an untrusted certificate is not retried"
        assert http(untrusting, "GET", f"{MOUNT}/kms/tls/key/{key}").status_code == 404

        trusting = start_server(KEYMGMT_AWS_CA_FILE=str(tls.ca_path))
        cli(trusting, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96")
        cli(trusting, "write", f"{MOUNT}/kms/tls", "provider=awskms", f"key_collection={REGION}",
            f"credentials=access_key={account.access_key}", f"credentials=secret_key={account.secret_key}",
            f"credentials=endpoint={endpoint}")
        cli(trusting, "write", f"{MOUNT}/kms/tls/key/{key}", "purpose=encrypt,decrypt")
        record = distribution(trusting, "tls", key)
        check_material(trusting, account, key, 1, record["versions"]["1"])
        cli(trusting, "delete", f"{MOUNT}/kms/tls/key/{key}")
    finally:
        tls.close()


# -- drift: status and reconcile -------------------------------------------------------


def status(server: BaoServer, kms: str, key: str) -> dict[str, Any]:
    return json.loads(cli(server, "read", "-format=json", f"{MOUNT}/kms/{kms}/key/{key}/status").stdout)["data"]


def reconcile(server: BaoServer, kms: str, key: str, *args: str) -> dict[str, Any]:
    out = cli(server, "write", "-f", "-format=json", f"{MOUNT}/kms/{kms}/key/{key}/reconcile", *args)
    return json.loads(out.stdout)["data"]


def kinds(data: dict[str, Any]) -> list[tuple[str, int | str | None]]:
    """The drift as (kind, version or provider id), in the order reported."""
    return [(d["kind"], d.get("version", d.get("provider_id"))) for d in data["drift"]]


def kms_fingerprint(account: Account, key_id: str) -> str:
    """sha256 of the public key as AWS hands it out, without the plugin."""
    der = account.kms().get_public_key(KeyId=key_id)["PublicKey"]
    return "sha256:" + hashes_sha256(der)


def hashes_sha256(data: bytes) -> str:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize().hex()


def key_states(account: Account) -> dict[str, str]:
    return {k["KeyId"]: k["KeyState"] for k in account.keys()}


def test_drift_is_reported_and_reconciled(server: BaoServer, account: Account, kms_proxy: AwsFaultProxy, key: str) -> None:
    """Status against LocalStack's state, changed behind Vault's back with boto3
    (DisableKey, EnableKey, a foreign key made the alias target, ScheduleKeyDeletion),
    and reconcile's repairs, read back from LocalStack. Primary region only."""
    kms = f"aws-{key}"
    boto = account.kms()
    cli(server, "write", f"{MOUNT}/key/{key}", "type=ecdsa-p256")
    cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    configure(server, kms, account, kms_proxy)
    cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=sign,verify")
    record = distribution(server, kms, key)
    v1, v2, v3 = (record["versions"][str(v)] for v in (1, 2, 3))
    alias = f"alias/hashicorp/{record['name']}"

    # In sync, and the fingerprints agree three ways: Vault's key read, the
    # provider's copy as status shows it, and GetPublicKey read directly.
    data = status(server, kms, key)
    assert data["in_sync"] is True and data["key_exists"] is True, data
    assert data["drift"] == [] and data["foreign_versions"] == []
    assert data["current_provider_id"] == v3
    vault_versions = read_key(server, key)["versions"]
    for version, key_id in record["versions"].items():
        entry = data["versions"][version]
        assert entry["provider_id"] == key_id
        assert entry["state"] == "Enabled" and entry["enabled"] is True
        assert entry["material"] == "matches"
        assert entry["provider_fingerprint"] == entry["fingerprint"] == vault_versions[version]["fingerprint"]
        assert entry["provider_fingerprint"] == kms_fingerprint(account, key_id)
        assert record["fingerprints"][version] == entry["fingerprint"]

    # Enabled flags changed outside Vault: version 1 (below min_enabled_version,
    # disabled by Vault with its material in) enabled, version 2 disabled.
    cli(server, "write", f"{MOUNT}/key/{key}", "min_enabled_version=2")
    data = status(server, kms, key)
    assert data["in_sync"] is True, data
    assert data["versions"]["1"]["material"] == "unverifiable", "AWS shows no public key of a disabled key"
    boto.enable_key(KeyId=v1)
    boto.disable_key(KeyId=v2)
    data = status(server, kms, key)
    assert data["in_sync"] is False
    assert kinds(data) == [("enabled_when_disabled", 1), ("disabled_when_enabled", 2)], data["drift"]
    assert data["drift"][0]["severity"] == "critical"
    dry = reconcile(server, kms, key, "dry_run=true")
    assert dry["dry_run"] is True and dry["actions"] == ["disable version 1", "enable version 2"], dry
    assert key_states(account) == {v1: "Enabled", v2: "Disabled", v3: "Enabled"}, "a dry run changes nothing"
    done = reconcile(server, kms, key)
    assert done["in_sync"] is True, done
    assert key_states(account) == {v1: "Disabled", v2: "Enabled", v3: "Enabled"}

    # A key made outside Vault becomes the alias target; another carries the
    # distribution's tags (as a copy of Vault's would) under a version Vault
    # never had.
    tags = {t["TagKey"]: t["TagValue"] for t in boto.list_resource_tags(KeyId=v3)["Tags"]}
    current = boto.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    boto.update_alias(AliasName=alias, TargetKeyId=current)
    tagged = boto.create_key(
        KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY",
        Tags=[{"TagKey": k, "TagValue": "9" if k == "keymgmt:version" else v} for k, v in tags.items()],
    )["KeyMetadata"]["KeyId"]
    data = status(server, kms, key)
    assert data["current_provider_id"] == current
    assert ("foreign_current", current) in kinds(data) and ("foreign_version", tagged) in kinds(data), data["drift"]
    assert ("not_current", 3) in kinds(data)
    assert data["drift"][0]["kind"] == "foreign_current"
    foreign = {f["provider_id"]: f for f in data["foreign_versions"]}
    assert set(foreign) == {current, tagged}
    assert foreign[current]["current"] is True and foreign[current]["vault_version"] is None
    assert foreign[tagged]["vault_version"] == 9 and foreign[tagged]["enabled"] is True
    assert foreign[current]["provider_fingerprint"] == kms_fingerprint(account, current)
    dry = reconcile(server, kms, key, "dry_run=true", "disable_foreign=true")
    assert f"disable foreign version {current}" in dry["actions"] and "make version 3 current" in dry["actions"], dry
    assert account.alias_target(alias) == current, "a dry run changes nothing"
    assert key_states(account)[current] == key_states(account)[tagged] == "Enabled"
    done = reconcile(server, kms, key, "disable_foreign=true")
    assert account.alias_target(alias) == v3
    states = key_states(account)
    assert states[current] == states[tagged] == "Disabled", "disabled, never deleted"
    assert {states[v] for v in (v2, v3)} == {"Enabled"} and states[v1] == "Disabled"
    assert done["in_sync"] is True, done
    assert kinds(done) == [("foreign_disabled", tagged)], "the untagged key is no longer named by the alias"

    # One version's key scheduled for deletion: missing; reconcile imports the
    # version again into a new key, tagged with its version.
    boto.schedule_key_deletion(KeyId=v2, PendingWindowInDays=7)
    data = status(server, kms, key)
    assert kinds(data)[0] == ("version_missing", 2), data["drift"]
    assert data["versions"]["2"]["state"] == "PendingDeletion" and data["versions"]["2"]["material"] == "missing"
    done = reconcile(server, kms, key)
    assert done["in_sync"] is True, done
    new_v2 = distribution(server, kms, key)["versions"]["2"]
    assert new_v2 not in (v1, v2, v3)
    [meta] = [k for k in account.keys() if k["KeyId"] == new_v2]
    assert meta["KeyState"] == "Enabled" and meta["Tags"]["keymgmt:version"] == "2"
    assert kms_fingerprint(account, new_v2) == vault_versions["2"]["fingerprint"]
    assert key_states(account)[v2] == "PendingDeletion"
    assert account.alias_target(alias) == v3

    # Every key deleted outside Vault: the key is missing, reconcile refuses.
    for key_id, state in key_states(account).items():
        if state != "PendingDeletion":
            boto.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    data = status(server, kms, key)
    assert data["key_exists"] is False and kinds(data) == [("key_missing", None)], data
    assert data["drift"][0]["severity"] == "critical"
    bad = cli(server, "write", "-f", f"{MOUNT}/kms/{kms}/key/{key}/reconcile", check=False)
    assert bad.returncode == 2 and "Code: 400" in bad.stderr and key in bad.stderr, bad.stderr
    cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{key}")


def test_aes_status_is_in_sync_but_unverifiable(server: BaoServer, account: Account, kms_proxy: AwsFaultProxy, key: str) -> None:
    kms = f"aws-{key}"
    cli(server, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96")
    configure(server, kms, account, kms_proxy)
    cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=encrypt,decrypt")
    data = status(server, kms, key)
    assert data["in_sync"] is True and data["drift"] == [], data
    entry = data["versions"]["1"]
    assert entry["material"] == "unverifiable" and entry["provider_fingerprint"] is None
    assert entry["fingerprint"].startswith("kcv:") and "symmetric" in entry["material_detail"]
    assert "GetPublicKey" not in kms_proxy.counts()
    cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{key}")


# -- last: nothing secret in any log ------------------------------------------------------


def test_no_secret_and_no_sdk_line_in_the_logs() -> None:
    assert SERVERS and SECRETS
    for srv in SERVERS:
        log = srv.log_text()
        assert "keymgmt" in log
        for secret in SECRETS:
            assert secret not in log, f"a secret key is in {srv.log_path}"
            assert base64.b64encode(secret.encode()).decode() not in log
        for marker in ("aws_sigv4", "aws_smithy", "canonical_request", "Authorization: AWS4", "x-amz-security-token"):
            assert marker not in log, f"{marker!r} in {srv.log_path}"
