"""The gcpckms provider under a real OpenBao server, against the Cloud KMS fake.

The fake (fakes/gcp_kms.py) checks every request against Google's discovery
document, verifies the service account's self-signed JWT, generates real
import-job keys and unwraps every import with Python `cryptography`. After
each step its state is asserted: CryptoKeys, versions and their states, the
primary, and imported material equal to Vault's (public keys for asymmetric
types; for AES, the unwrapped bytes against the material Vault stored, read
through the server's `sys/raw`, not through the plugin).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from fakes.gcp_auth import new_service_account
from fakes.gcp_kms import DAY, FakeCloudKms, GcpKmsFake, _Version
from harness import MOUNT, BaoServer, cli, http, install_plugin, kill_plugins, read_key, stored_material

SERVERS: list[BaoServer] = []


def gcp_env(fake: GcpKmsFake, **extra: str | None) -> dict[str, str | None]:
    return {
        "KEYMGMT_GCP_KMS_ENDPOINT": fake.kms_url,
        "KEYMGMT_GCP_CA_FILE": fake.ca_pem_path,
        "KEYMGMT_GCP_RETRY_BASE_MS": "20",
        "GOOGLE_CREDENTIALS": None,
        "GOOGLE_APPLICATION_CREDENTIALS": None,
        # Application default credentials must never reach a metadata server.
        "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9",
        "KEYMGMT_LOG_LEVEL": "trace",
        **extra,
    }


@pytest.fixture(scope="module")
def fake() -> Iterator[GcpKmsFake]:
    with FakeCloudKms(import_job_delay=0.05, version_delay=0.05) as started:
        yield started


@pytest.fixture(scope="module")
def start_server(fake: GcpKmsFake, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., BaoServer]]:
    started: list[BaoServer] = []

    def start(**extra: str | None) -> BaoServer:
        srv = BaoServer(tmp_path_factory.mktemp("gcp"), env=gcp_env(fake, **extra), raw_storage=True)
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


_counter = iter(range(10**6))


@pytest.fixture
def key() -> str:
    return f"key{next(_counter)}-{time.monotonic_ns() % 10**6}"


def configure(server: BaoServer, fake: GcpKmsFake, name: str) -> None:
    cli(server, "write", f"{MOUNT}/kms/{name}", "provider=gcpckms", f"key_collection={fake.key_collection}",
        f"credentials=service_account_file={fake.service_account_file}")


def distribution(server: BaoServer, kms: str, key: str) -> dict[str, Any]:
    return json.loads(cli(server, "read", "-format=json", f"{MOUNT}/kms/{kms}/key/{key}").stdout)["data"]


def crypto_key(fake: GcpKmsFake, record: dict[str, Any]) -> Any:
    return fake.crypto_key(f"{fake.key_collection}/cryptoKeys/{record['name']}")


def spki(pem: str) -> bytes:
    return serialization.load_pem_public_key(pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_versions(server: BaoServer, fake: GcpKmsFake, kms: str, key: str) -> dict[str, Any]:
    """Every recorded version is in Cloud KMS once, holding Vault's material."""
    record = distribution(server, kms, key)
    snapshot = crypto_key(fake, record)
    data = read_key(server, key)
    by_id = {v.id: v for v in snapshot.versions}
    live = [v for v in snapshot.versions if v.state not in ("DESTROYED", "DESTROY_SCHEDULED", "IMPORT_FAILED")]
    imported = {n: i for n, i in record["versions"].items() if i != "not-imported"}
    assert sorted(v.id for v in live) == sorted(imported.values()), (record, [v.id for v in live])
    for n, version_id in imported.items():
        held = by_id[version_id]
        if data["type"] == "aes256-gcm96":
            assert held.material == stored_material(server, key, int(n)), f"version {n}: material differs"
        elif n in data["versions"]:  # reads hide versions below min_enabled_version
            assert held.public_key_pem is not None
            assert spki(held.public_key_pem) == spki(data["versions"][n]["public_key"]), f"version {n}"
    return record


# -- the lifecycle ----------------------------------------------------------------

TYPES = [
    ("aes256-gcm96", "encrypt,decrypt", "ENCRYPT_DECRYPT", "GOOGLE_SYMMETRIC_ENCRYPTION"),
    ("rsa-2048", "decrypt", "ASYMMETRIC_DECRYPT", "RSA_DECRYPT_OAEP_2048_SHA256"),
    ("rsa-3072", "sign", "ASYMMETRIC_SIGN", "RSA_SIGN_PKCS1_3072_SHA256"),
    ("rsa-4096", "decrypt", "ASYMMETRIC_DECRYPT", "RSA_DECRYPT_OAEP_4096_SHA256"),
    ("ecdsa-p256", "sign", "ASYMMETRIC_SIGN", "EC_SIGN_P256_SHA256"),
    ("ecdsa-p384", "sign", "ASYMMETRIC_SIGN", "EC_SIGN_P384_SHA384"),
]


@pytest.mark.parametrize("protection", ["hsm", "software"])
@pytest.mark.parametrize(("key_type", "purpose", "gcp_purpose", "algorithm"), TYPES)
def test_lifecycle(
    server: BaoServer, fake: GcpKmsFake, key: str, key_type: str, purpose: str, gcp_purpose: str,
    algorithm: str, protection: str,
) -> None:
    kms = f"gcp-{key}"
    configure(server, fake, kms)
    cli(server, "write", f"{MOUNT}/key/{key}", f"type={key_type}")
    cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", f"purpose={purpose}", f"protection={protection}")
    record = check_versions(server, fake, kms, key)
    snapshot = crypto_key(fake, record)
    assert (snapshot.purpose, snapshot.algorithm) == (gcp_purpose, algorithm)
    assert snapshot.protection_level == protection.upper()
    assert snapshot.import_only
    assert {v.state for v in snapshot.versions} == {"ENABLED"}
    assert record["versions"] == {"1": "1", "2": "2"}
    symmetric = key_type == "aes256-gcm96"
    assert snapshot.primary == ("2" if symmetric else None)

    # Rotate: a new version, the primary moves for symmetric keys.
    cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    record = check_versions(server, fake, kms, key)
    assert crypto_key(fake, record).primary == ("3" if symmetric else None)

    # min_enabled_version disables and enables.
    cli(server, "write", f"{MOUNT}/key/{key}", "min_enabled_version=3")
    states = {v.id: v.state for v in crypto_key(fake, record).versions}
    assert states == {"1": "DISABLED", "2": "DISABLED", "3": "ENABLED"}
    cli(server, "write", f"{MOUNT}/key/{key}", "min_enabled_version=1")
    assert {v.state for v in crypto_key(fake, record).versions} == {"ENABLED"}

    # Remove: every version is destroyed; the key stays in Vault.
    cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{key}")
    assert {v.state for v in crypto_key(fake, record).versions} == {"DESTROY_SCHEDULED"}
    assert http(server, "GET", f"{MOUNT}/kms/{kms}/key/{key}").status_code == 404

    # Redistribute: a new CryptoKey.
    time.sleep(1.1)
    cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", f"purpose={purpose}", f"protection={protection}")
    again = check_versions(server, fake, kms, key)
    assert again["name"] != record["name"] and len(again["versions"]) == 3
    cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{key}")


def test_disabled_versions_are_imported_only_once_enabled(server: BaoServer, fake: GcpKmsFake, key: str) -> None:
    kms = f"gcp-{key}"
    configure(server, fake, kms)
    cli(server, "write", f"{MOUNT}/key/{key}", "type=ecdsa-p256")
    for _ in range(2):
        cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    cli(server, "write", f"{MOUNT}/key/{key}", "min_enabled_version=3")
    cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=sign")
    record = distribution(server, kms, key)
    assert record["versions"] == {"1": "not-imported", "2": "not-imported", "3": "1"}
    assert [v.id for v in crypto_key(fake, record).versions] == ["1"], "versions 1 and 2 never reached Google"
    # Kept out of Google while disabled is where they should be.
    state = status(server, kms, key)
    assert state["in_sync"] and state["drift"] == [], state
    assert state["versions"]["1"]["state"] == "NOT_IMPORTED" and state["versions"]["1"]["material"] == "absent"
    cli(server, "write", f"{MOUNT}/key/{key}", "min_enabled_version=1")
    record = check_versions(server, fake, kms, key)
    assert sorted(record["versions"].values()) == ["1", "2", "3"]
    assert {v.state for v in crypto_key(fake, record).versions} == {"ENABLED"}
    cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{key}")


# -- drift: status and reconcile ------------------------------------------------------


def status(server: BaoServer, kms: str, key: str) -> dict[str, Any]:
    return json.loads(cli(server, "read", "-format=json", f"{MOUNT}/kms/{kms}/key/{key}/status").stdout)["data"]


def reconcile(server: BaoServer, kms: str, key: str, *args: str) -> dict[str, Any]:
    flags = () if args else ("-f",)
    out = cli(server, "write", "-format=json", *flags, f"{MOUNT}/kms/{kms}/key/{key}/reconcile", *args)
    return json.loads(out.stdout)["data"]


def kinds(state: dict[str, Any]) -> dict[str, set[str]]:
    """Drift kind -> the versions (or provider ids) it names."""
    found: dict[str, set[str]] = {}
    for d in state["drift"]:
        found.setdefault(d["kind"], set()).add(str(d.get("version") or d.get("provider_id")))
    return found


@contextlib.contextmanager
def tampered(fake: GcpKmsFake, record: dict[str, Any]) -> Iterator[Any]:
    """The fake's own CryptoKey, changed directly (as in the console), not through its API."""
    with fake._kms._lock:
        yield fake._kms._key(f"{fake.key_collection}/cryptoKeys/{record['name']}")


def states(fake: GcpKmsFake, record: dict[str, Any]) -> dict[str, str]:
    return {v.id: v.state for v in crypto_key(fake, record).versions}


def test_drift_of_an_asymmetric_key(server: BaoServer, fake: GcpKmsFake, key: str) -> None:
    kms = f"gcp-{key}"
    configure(server, fake, kms)
    cli(server, "write", f"{MOUNT}/key/{key}", "type=ecdsa-p256")
    cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=sign")
    record = distribution(server, kms, key)
    state = status(server, kms, key)
    assert state["in_sync"] and state["key_exists"] and state["drift"] == [], state
    assert state["current_provider_id"] is None, "asymmetric keys have no primary"
    read = read_key(server, key)
    for n, held in record["versions"].items():
        pem = next(v.public_key_pem for v in crypto_key(fake, record).versions if v.id == held)
        independent = "sha256:" + hashlib.sha256(spki(pem)).hexdigest()
        version = state["versions"][n]
        assert version["provider_fingerprint"] == read["versions"][n]["fingerprint"] == independent, (n, version)
        assert version["material"] == "matches" and version["state"] == "ENABLED", version

    # Version 1 disabled and version 2 destroyed in the console.
    with tampered(fake, record) as live:
        live.version("1").state = "DISABLED"
        two = live.version("2")
        two.state, two.destroy_time = "DESTROY_SCHEDULED", fake._kms.clock.now() + live.destroy_duration
    state = status(server, kms, key)
    assert not state["in_sync"]
    assert kinds(state) == {"disabled_when_enabled": {"1"}, "version_missing": {"2"}}, state["drift"]
    assert state["versions"]["1"]["material"] == "unverifiable", state["versions"]["1"]
    assert "enabled versions only" in state["versions"]["1"]["material_detail"]
    assert state["versions"]["2"]["state"] == "DESTROY_SCHEDULED"
    before = crypto_key(fake, record)
    dry = reconcile(server, kms, key, "dry_run=true")
    assert sorted(dry["actions"]) == ["enable version 1", "import version 2"], dry["actions"]
    assert crypto_key(fake, record) == before, "a dry run changes nothing in Google"

    # Reconciling enables version 1 and imports version 2 again as a new version.
    done = reconcile(server, kms, key)
    assert done["in_sync"], done["drift"]
    record = check_versions(server, fake, kms, key)
    assert record["versions"] == {"1": "1", "2": "3"}, record
    assert states(fake, record) == {"1": "ENABLED", "2": "DESTROY_SCHEDULED", "3": "ENABLED"}
    assert status(server, kms, key)["versions"]["2"]["provider_fingerprint"] == read["versions"]["2"]["fingerprint"]

    # Enabled in the console below min_enabled_version: critical, disabled again.
    cli(server, "write", f"{MOUNT}/key/{key}", "min_enabled_version=2")
    assert states(fake, record)["1"] == "DISABLED"
    with tampered(fake, record) as live:
        live.version("1").state = "ENABLED"
    state = status(server, kms, key)
    assert kinds(state) == {"enabled_when_disabled": {"1"}}, state["drift"]
    assert state["drift"][0]["severity"] == "critical"
    assert reconcile(server, kms, key)["in_sync"]
    assert states(fake, record) == {"1": "DISABLED", "2": "DESTROY_SCHEDULED", "3": "ENABLED"}
    cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{key}")


def test_drift_of_a_symmetric_key(server: BaoServer, fake: GcpKmsFake, key: str) -> None:
    kms = f"gcp-{key}"
    configure(server, fake, kms)
    cli(server, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96")
    cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=encrypt,decrypt")
    record = distribution(server, kms, key)
    state = status(server, kms, key)
    assert state["in_sync"] and state["current_provider_id"] == "2", state
    for version in state["versions"].values():
        assert version["material"] == "unverifiable" and version["provider_fingerprint"] is None, version
        assert "Cloud KMS does not expose" in version["material_detail"]

    # Someone imports a version of their own and makes it the primary.
    with tampered(fake, record) as live:
        now = fake._kms.clock.now()
        foreign = _Version("3", f"{live.name}/cryptoKeyVersions/3", live.algorithm, live.protection, now,
                           "imported", "ENABLED", import_job=f"{fake.key_collection}/importJobs/operator",
                           import_time=now, material=os.urandom(32))
        live.versions.append(foreign)
        live.primary = "3"
    state = status(server, kms, key)
    assert kinds(state) == {"foreign_current": {"3"}, "not_current": {"2"}}, state["drift"]
    assert state["current_provider_id"] == "3" and state["foreign_versions"][0]["current"], state
    dry = reconcile(server, kms, key, "dry_run=true")
    assert dry["actions"] == ["make version 2 current"], dry["actions"]
    assert crypto_key(fake, record).primary == "3", "a dry run changes nothing in Google"

    # Reconciling makes ours the primary again; the foreign version stays usable...
    done = reconcile(server, kms, key)
    assert kinds(done) == {"foreign_version": {"3"}}, done["drift"]
    assert crypto_key(fake, record).primary == "2"
    assert states(fake, record)["3"] == "ENABLED"
    # ... until disable_foreign=true disables it, without destroying it.
    done = reconcile(server, kms, key, "disable_foreign=true")
    assert done["actions"] == ["disable foreign version 3"], done["actions"]
    assert done["in_sync"] and kinds(done) == {"foreign_disabled": {"3"}}, done["drift"]
    assert states(fake, record) == {"1": "ENABLED", "2": "ENABLED", "3": "DISABLED"}
    assert next(v for v in crypto_key(fake, record).versions if v.id == "3").material is not None
    # A rotation imports a new version, never adopting the foreign one.
    cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    record = distribution(server, kms, key)
    assert record["versions"] == {"1": "1", "2": "2", "3": "4"} and crypto_key(fake, record).primary == "4"
    assert states(fake, record) == {"1": "ENABLED", "2": "ENABLED", "3": "DISABLED", "4": "ENABLED"}
    held = next(v for v in crypto_key(fake, record).versions if v.id == "4")
    assert held.material == stored_material(server, key, 3)

    # The CryptoKey gone from Google (another project, a ring re-created).
    with fake._kms._lock:
        del fake._kms._keys[f"{fake.key_collection}/cryptoKeys/{record['name']}"]
    state = status(server, kms, key)
    assert not state["key_exists"] and kinds(state) == {"key_missing": {"None"}}, state
    bad = cli(server, "write", "-f", f"{MOUNT}/kms/{kms}/key/{key}/reconcile", check=False)
    assert bad.returncode == 2 and "Code: 400" in bad.stderr and key in bad.stderr, bad.stderr
    assert "deleted outside Vault" in bad.stderr, bad.stderr
    cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{key}")


def test_a_key_whose_versions_are_all_destroyed_is_missing(server: BaoServer, fake: GcpKmsFake, key: str) -> None:
    """Cloud KMS cannot delete a CryptoKey: destroying every version is how it is deleted."""
    kms = f"gcp-{key}"
    configure(server, fake, kms)
    cli(server, "write", f"{MOUNT}/key/{key}", "type=ecdsa-p384")
    cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=sign")
    record = distribution(server, kms, key)
    with tampered(fake, record) as live:
        for version in live.versions:
            version.state, version.destroy_time = "DESTROY_SCHEDULED", fake._kms.clock.now() + DAY
    state = status(server, kms, key)
    assert not state["key_exists"] and kinds(state) == {"key_missing": {"None"}}, state
    cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{key}")


@pytest.mark.parametrize(
    ("key_type", "args", "fragment"),
    [
        ("ecdsa-p521", ["purpose=sign"], "not supported by the gcpckms provider"),
        ("rsa-2048", ["purpose=decrypt,sign"], "not both"),
        ("aes256-gcm96", ["purpose=encrypt"], "encrypt,decrypt"),
        ("ecdsa-p256", ["purpose=verify"], "purpose"),
    ],
)
def test_refused_before_any_call(
    server: BaoServer, fake: GcpKmsFake, key: str, key_type: str, args: list[str], fragment: str
) -> None:
    kms = f"gcp-{key}"
    configure(server, fake, kms)
    cli(server, "write", f"{MOUNT}/key/{key}", f"type={key_type}")
    before = len(fake.requests)
    bad = cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", *args, check=False)
    assert bad.returncode == 2 and "Code: 400" in bad.stderr and fragment in bad.stderr, bad.stderr
    assert len(fake.requests) == before, "nothing reached Google"
    assert http(server, "GET", f"{MOUNT}/kms/{kms}/key/{key}").status_code == 404


def test_settings_are_refused_at_write(server: BaoServer, fake: GcpKmsFake, key: str) -> None:
    cases = [
        (["key_collection=my-ring"], "key_collection"),
        ([f"key_collection={fake.key_collection}", "credentials=project=other-project"], "credentials.project"),
        ([f"key_collection={fake.key_collection}", "credentials=service_account_file=sa.json"],
         "credentials.service_account_file"),
    ]
    for args, field in cases:
        bad = cli(server, "write", f"{MOUNT}/kms/gcp-{key}", "provider=gcpckms", *args, check=False)
        assert bad.returncode == 2 and f"{field}: " in bad.stderr, bad.stderr
        assert http(server, "GET", f"{MOUNT}/kms/gcp-{key}").status_code == 404


# -- failures -------------------------------------------------------------------

# (method, path regex, whether the path names the CryptoKey): paths carry no query.
SITES = [
    ("POST", r"/keyRings/[^/]+/cryptoKeys$", False),
    ("POST", r"/importJobs$", False),
    ("GET", r"/importJobs/[^/]+$", False),
    ("POST", r"/cryptoKeyVersions:import$", True),
    ("GET", r"/cryptoKeyVersions$", True),
    ("POST", r":updatePrimaryVersion$", True),
    ("PATCH", r"/cryptoKeyVersions/[^/:]+$", True),
    ("POST", r"/cryptoKeyVersions/[^/]+:destroy$", True),
]


@pytest.mark.parametrize("kind", ["429", "503", "lost"])
@pytest.mark.parametrize(("method", "path", "per_key"), SITES)
def test_a_fault_at_each_call_site_converges(
    server: BaoServer, fake: GcpKmsFake, key: str, method: str, path: str, per_key: bool, kind: str
) -> None:
    kms = f"gcp-{key}"
    configure(server, fake, kms)
    cli(server, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96")
    if "importJobs" in path:
        # The provider reuses an active job: make it create one now.
        for name in fake.import_jobs():
            fake.expire_import_job(name)
    scope = r"/cryptoKeys/" + re.escape(key) + r"-\d+" + path.lstrip("^") if per_key else path
    fake.inject(method, scope, kind)
    cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=encrypt,decrypt")
    cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    cli(server, "write", f"{MOUNT}/key/{key}", "min_enabled_version=2")
    cli(server, "write", f"{MOUNT}/key/{key}", "min_enabled_version=1")
    record = check_versions(server, fake, kms, key)
    assert crypto_key(fake, record).primary == "2"
    cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{key}")
    assert {v.state for v in crypto_key(fake, record).versions} == {"DESTROY_SCHEDULED"}
    assert fake.pending_faults() == [], "the fault was injected"


def test_permission_denied_names_the_permission(server: BaoServer, fake: GcpKmsFake, key: str) -> None:
    kms = f"gcp-{key}"
    configure(server, fake, kms)
    cli(server, "write", f"{MOUNT}/key/{key}", "type=ecdsa-p384")
    fake.deny("cloudkms.cryptoKeys.create")
    try:
        bad = cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=sign", check=False)
    finally:
        fake.allow("cloudkms.cryptoKeys.create")
    assert bad.returncode == 2 and "Code: 400" in bad.stderr and "cloudkms.cryptoKeys.create" in bad.stderr, bad.stderr
    assert http(server, "GET", f"{MOUNT}/kms/{kms}/key/{key}").status_code == 404, "nothing was created"
    fake.deny("cloudkms.importJobs.useToImport")
    try:
        bad = cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=sign", check=False)
    finally:
        fake.allow("cloudkms.importJobs.useToImport")
    assert bad.returncode == 2 and "cloudkms.importJobs.useToImport" in bad.stderr, bad.stderr
    cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=sign")
    check_versions(server, fake, kms, key)
    cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{key}")


def test_a_failed_import_is_a_400_with_googles_reason(server: BaoServer, fake: GcpKmsFake, key: str) -> None:
    kms = f"gcp-{key}"
    configure(server, fake, kms)
    cli(server, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96")
    fake.fail_next_imports("The HSM rejected the key (injected).")
    bad = cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=encrypt,decrypt", check=False)
    assert bad.returncode == 2 and "Code: 400" in bad.stderr and "HSM rejected the key" in bad.stderr, bad.stderr
    cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=encrypt,decrypt")
    check_versions(server, fake, kms, key)
    cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{key}")


def test_an_expired_import_job_is_replaced(server: BaoServer, fake: GcpKmsFake, key: str) -> None:
    kms = f"gcp-{key}"
    configure(server, fake, kms)
    cli(server, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96")
    cli(server, "write", f"{MOUNT}/kms/{kms}/key/{key}", "purpose=encrypt,decrypt")
    jobs_before = set(fake.import_jobs())
    for name in jobs_before:
        fake.expire_import_job(name)
    cli(server, "write", "-f", f"{MOUNT}/key/{key}/rotate")
    assert set(fake.import_jobs()) > jobs_before, "a fresh job"
    check_versions(server, fake, kms, key)
    cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{key}")


# -- credentials -------------------------------------------------------------------


def test_credentials_precedence(start_server: Callable[..., BaoServer], fake: GcpKmsFake, key: str,
                                tmp_path: Path) -> None:
    env_account = new_service_account(fake.service_account.project_id, "from-env")
    adc_account = new_service_account(fake.service_account.project_id, "from-adc")
    fake.service_accounts.extend([env_account, adc_account])
    env_json = json.dumps(fake.service_account_info(env_account))
    adc_file = tmp_path / "adc.json"
    adc_account.write_key_file(adc_file, fake.token_uri)

    # GOOGLE_CREDENTIALS (the JSON itself) wins over the credentials map.
    srv = start_server(GOOGLE_CREDENTIALS=env_json)
    configure(srv, fake, "gcp")
    cli(srv, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96")
    before = len(fake.principals)
    cli(srv, "write", f"{MOUNT}/kms/gcp/key/{key}", "purpose=encrypt,decrypt")
    assert {p.client_email for p in fake.principals[before:]} == {env_account.client_email}

    # Without either: the application default credentials.
    srv = start_server(GOOGLE_APPLICATION_CREDENTIALS=str(adc_file))
    cli(srv, "write", f"{MOUNT}/kms/gcp", "provider=gcpckms", f"key_collection={fake.key_collection}")
    cli(srv, "write", f"{MOUNT}/key/{key}", "type=aes256-gcm96")
    before = len(fake.principals)
    cli(srv, "write", f"{MOUNT}/kms/gcp/key/{key}", "purpose=encrypt,decrypt")
    assert {p.client_email for p in fake.principals[before:]} == {adc_account.client_email}


def test_no_secret_in_the_logs(fake: GcpKmsFake) -> None:
    assert SERVERS
    secrets = []
    for account in fake.service_accounts:
        pem = account.private_key_pem()
        secrets += [line for line in pem.splitlines() if "PRIVATE KEY" not in line][1:4]
    assert not fake.validation_failures, fake.validation_failures
    for srv in SERVERS:
        log = srv.log_text()
        assert "cloud kms: imported version" in log or srv is not SERVERS[0]
        for secret in secrets:
            assert secret not in log, f"a private key line is in {srv.log_path}"
        assert "Bearer " not in log and "eyJ" not in log, f"a token is in {srv.log_path}"
