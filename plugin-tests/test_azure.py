"""The azurekeyvault provider under a real OpenBao server, against the HTTPS Azure fake.

The plugin finds the fake through the environment variables it documents
(the server's environment is the plugin's under OpenBao): the Key Vault
endpoint, the Entra ID authority, the IMDS endpoint and the fake's CA. The
fake validates every request against the keys-7.6 spec and unwraps every
BYOK blob with `cryptography`, so "the fake holds Vault's key" is proven
independently of the plugin's Rust code.

After the module, the server logs (plugin stderr included) are searched for
every credential, token and private key the suite used.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fakes import AzureKeyVaultFake, FakeKeyVault, KeyVersion
from fakes.httpserver import Response
from harness import (
    MOUNT,
    PLUGIN_NAME,
    BaoServer,
    CliError,
    cli,
    install_plugin,
    kill_plugins,
    plugin_version,
    register_private_key,
    register_secret,
    require_plugin_binary,
)

# The credentials of keymgmt-docs-page.txt step 2, so that step runs verbatim.
DOC_TENANT = "cd4bf224-d114-4f96-9bbc-b8f45751c43f"
DOC_CLIENT = "a0454cd1-e28e-405e-bc50-7477fa8a00b7"
DOC_SECRET = register_secret("eR%HizuCVEpAKgeaUEx")

RSA_TYPES = ["rsa-2048", "rsa-3072", "rsa-4096"]
EC_TYPES = ["ecdsa-p256", "ecdsa-p384", "ecdsa-p521"]
KEY_OPS = {"encrypt": "encrypt", "decrypt": "decrypt", "sign": "sign", "verify": "verify",
           "wrap": "wrapKey", "unwrap": "unwrapKey"}

SERVERS: list[BaoServer] = []


# -- fixtures ------------------------------------------------------------------


def fake_env(fake: AzureKeyVaultFake, **extra: str | None) -> dict[str, str | None]:
    """The documented overrides pointing the plugin at the fake, minus any real AZURE_* setup."""
    return {
        "KEYMGMT_AZURE_KEYVAULT_ENDPOINT": fake.vault_url,
        "AZURE_AUTHORITY_HOST": fake.authority_url,
        "KEYMGMT_AZURE_IMDS_ENDPOINT": fake.imds_url,
        "KEYMGMT_AZURE_CA_FILE": fake.ca_pem_path,
        # Fast backoff so fault-injection tests stay quick; Retry-After still rules.
        "KEYMGMT_AZURE_RETRY_BASE_MS": "50",
        # The most verbose plugin logging (dependencies' included), so the
        # final secret scan sees everything that could ever be logged.
        "KEYMGMT_LOG_LEVEL": "trace",
        "AZURE_TENANT_ID": None,
        "AZURE_CLIENT_ID": None,
        "AZURE_CLIENT_SECRET": None,
        "AZURE_ENVIRONMENT": None,
        **extra,
    }


@pytest.fixture(scope="module")
def fake() -> Iterator[AzureKeyVaultFake]:
    with FakeKeyVault(tenant_id=DOC_TENANT, client_id=DOC_CLIENT, client_secret=DOC_SECRET) as started:
        yield started
        # Every key imported into the fake, for the session's final secret scan.
        for name in started.keys() + started.deleted_keys():
            for version in started.versions(name):
                if version.origin != "generated":  # the fake's own key-exchange keys
                    register_private_key(version.private_key)


@pytest.fixture(scope="module")
def start_server(
    fake: AzureKeyVaultFake, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., BaoServer]]:
    """Servers whose plugin talks to the fake; `mount=False` leaves keymgmt registered only."""
    started: list[BaoServer] = []

    def start(mount: bool = True, **extra_env: str | None) -> BaoServer:
        srv = BaoServer(tmp_path_factory.mktemp("azure"), env=fake_env(fake, **extra_env))
        started.append(srv)
        SERVERS.append(srv)
        if mount:
            install_plugin(srv)
        else:
            register_plugin(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
        kill_plugins(srv)


@pytest.fixture(scope="module")
def server(start_server: Callable[..., BaoServer]) -> BaoServer:
    return start_server()


@pytest.fixture
def kms(server: BaoServer, fake: AzureKeyVaultFake) -> str:
    """A fresh azurekeyvault provider on the shared server."""
    name = f"az-{time.monotonic_ns() % 10**9}"
    configure_kms(server, fake, name)
    return name


_counter = iter(range(10**6))


@pytest.fixture
def key() -> str:
    return f"key{next(_counter)}-{time.monotonic_ns() % 10**6}"


# -- helpers -------------------------------------------------------------------


def register_plugin(server: BaoServer) -> None:
    """Copy and register the plugin without enabling it (step 1 enables it verbatim)."""
    target = server.plugin_dir / PLUGIN_NAME
    shutil.copy2(require_plugin_binary(), target)
    sha256 = hashlib.sha256(target.read_bytes()).hexdigest()
    cli(server, "plugin", "register", f"-sha256={sha256}", f"-command={PLUGIN_NAME}",
        f"-version={plugin_version()}", "secret", MOUNT)


def configure_kms(server: BaoServer, fake: AzureKeyVaultFake, name: str, **credentials: str) -> None:
    creds = credentials or fake.credentials
    cli(server, "write", f"keymgmt/kms/{name}", "provider=azurekeyvault", "key_collection=keyvault-name",
        *[f"credentials={k}={v}" for k, v in creds.items()])


def read_json(server: BaoServer, path: str) -> dict[str, Any]:
    return json.loads(cli(server, "read", "-format=json", path).stdout)["data"]


def vault_public_keys(server: BaoServer, key: str) -> dict[int, str]:
    """Vault's public key PEM per (visible) version."""
    versions = read_json(server, f"keymgmt/key/{key}")["versions"]
    return {int(v): body["public_key"] for v, body in versions.items()}


def public_numbers(pem: str) -> Any:
    public = serialization.load_pem_public_key(pem.encode())
    assert isinstance(public, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey))
    return public.public_numbers()


def distribution(server: BaoServer, kms: str, key: str) -> dict[str, Any]:
    return read_json(server, f"keymgmt/kms/{kms}/key/{key}")


def distribute(server: BaoServer, kms: str, key: str, purpose: str, protection: str,
               check: bool = True) -> Any:
    return cli(server, "write", f"keymgmt/kms/{kms}/key/{key}", f"purpose={purpose}",
               f"protection={protection}", check=check)


def assert_fake_matches(
    fake: AzureKeyVaultFake, server: BaoServer, kms: str, key: str,
    publics: dict[int, str], *, protection: str, purposes: set[str], min_enabled: int = 1,
) -> list[KeyVersion]:
    """Every Vault version is exactly one Azure version, holding Vault's key; the latest is current.

    Earlier versions may be imported in parallel, so their Azure order is free.
    """
    record = distribution(server, kms, key)
    name = record["name"]
    assert re.fullmatch(re.escape(key) + r"-\d{10}", name), name
    assert name in fake.keys()
    stored = fake.versions(name)
    recorded = {int(v): azure for v, azure in record["versions"].items()}
    assert sorted(recorded) == sorted(publics), (recorded, sorted(publics))
    assert sorted(v.version for v in stored) == sorted(recorded.values()), "one Azure version per Vault version"
    assert len(stored) == len(recorded), "one Azure version per Vault version"
    if recorded:
        assert stored[-1].version == recorded[max(recorded)], "the latest Vault version is the current Azure one"
    by_id = {v.version: v for v in stored}
    family = "RSA" if all(isinstance(v.private_key, rsa.RSAPrivateKey) for v in stored) else "EC"
    for vault_version, azure in ((v, by_id[recorded[v]]) for v in sorted(recorded)):
        assert azure.private_key.public_key().public_numbers() == public_numbers(publics[vault_version])
        assert azure.tags == {"vault_version": str(vault_version)}
        assert azure.kty == (f"{family}-HSM" if protection == "hsm" else family)
        assert azure.origin == ("byok" if protection == "hsm" else "software")
        assert set(azure.key_ops) == {KEY_OPS[p] for p in purposes}
        assert azure.enabled == (vault_version >= min_enabled), vault_version
    assert fake.kek_count_alive() == 0, "key-exchange keys are deleted"
    return stored


def vault_requests(fake: AzureKeyVaultFake) -> list[Any]:
    return [r for r in fake.requests if r.service == "vault"]


# -- the documented sequence, verbatim -------------------------------------------


def test_documented_sequence(start_server: Callable[..., BaoServer], fake: AzureKeyVaultFake) -> None:
    server = start_server(mount=False)
    vault = lambda *args: cli(server, *args)  # noqa: E731

    # Setup 1.
    out = vault("secrets", "enable", "keymgmt")
    assert out.stdout.strip() == "Success! Enabled the keymgmt secrets engine at: keymgmt/"

    # Usage 1: no call to Azure for a general-purpose key.
    before = len(fake.requests)
    out = vault("write", "-f", "keymgmt/key/example-key", "type=rsa-2048")
    assert out.stdout.strip() == "Success! Data written to: keymgmt/key/example-key"
    assert len(fake.requests) == before

    # Usage 2, with the page's credentials (the fake was made with them).
    vault("write", "keymgmt/kms/example-kms",
          "provider=azurekeyvault",
          "key_collection=keyvault-name",
          "credentials=client_id=a0454cd1-e28e-405e-bc50-7477fa8a00b7",
          "credentials=client_secret=eR%HizuCVEpAKgeaUEx",
          "credentials=tenant_id=cd4bf224-d114-4f96-9bbc-b8f45751c43f")
    shown = vault("read", "keymgmt/kms/example-kms").stdout
    for secret in (DOC_SECRET, DOC_CLIENT, DOC_TENANT):
        assert secret not in shown
    assert len(fake.requests) == before

    # Usage 3.
    vault("write", "keymgmt/kms/example-kms/key/example-key", "purpose=encrypt,decrypt", "protection=hsm")
    publics = vault_public_keys(server, "example-key")
    assert list(publics) == [1]
    record = distribution(server, "example-kms", "example-key")
    assert (record["purpose"], record["protection"]) == ("decrypt,encrypt", "hsm")
    assert_fake_matches(fake, server, "example-kms", "example-key", publics,
                        protection="hsm", purposes={"encrypt", "decrypt"})

    # Usage 4: the new version is imported and current.
    vault("write", "-f", "keymgmt/key/example-key/rotate")
    publics = vault_public_keys(server, "example-key")
    assert list(publics) == [1, 2]
    stored = assert_fake_matches(fake, server, "example-kms", "example-key", publics,
                                 protection="hsm", purposes={"encrypt", "decrypt"})
    name = record["name"]
    assert fake.current_version(name).version == stored[1].version
    assert fake.current_version(name).private_key.public_key().public_numbers() == public_numbers(publics[2])

    # Usage 5: versions below min_enabled_version are disabled.
    vault("write", "keymgmt/key/example-key", "min_enabled_version=2")
    assert_fake_matches(fake, server, "example-kms", "example-key", publics,
                        protection="hsm", purposes={"encrypt", "decrypt"}, min_enabled=2)

    # Usage 6: the key is deleted from Azure (soft delete) and stays in Vault.
    vault("delete", "keymgmt/kms/example-kms/key/example-key")
    assert name not in fake.keys() and name in fake.deleted_keys()
    assert cli(server, "read", "keymgmt/kms/example-kms/key/example-key", check=False).returncode != 0
    assert vault_public_keys(server, "example-key") == {2: publics[2]}

    # ... and can be redistributed later, under a new name.
    time.sleep(1.1)  # the name carries unix seconds; the old one is soft-deleted
    vault("write", "keymgmt/kms/example-kms/key/example-key", "purpose=encrypt,decrypt", "protection=hsm")
    again = distribution(server, "example-kms", "example-key")
    assert again["name"] != name
    assert_fake_matches(fake, server, "example-kms", "example-key", publics,
                        protection="hsm", purposes={"encrypt", "decrypt"}, min_enabled=2)
    # min_enabled_version=0 enables every version again.
    vault("write", "keymgmt/key/example-key", "min_enabled_version=0")
    assert all(v.enabled for v in fake.versions(again["name"]))


# -- every importable type, both protections --------------------------------------


@pytest.mark.parametrize("protection", ["hsm", "software"])
@pytest.mark.parametrize("key_type", RSA_TYPES + EC_TYPES)
def test_types_and_protections(server: BaoServer, fake: AzureKeyVaultFake, kms: str, key: str,
                               key_type: str, protection: str) -> None:
    purpose = "encrypt,decrypt" if key_type.startswith("rsa") else "sign,verify"
    cli(server, "write", f"keymgmt/key/{key}", f"type={key_type}")
    cli(server, "write", "-f", f"keymgmt/key/{key}/rotate")
    distribute(server, kms, key, purpose, protection)
    publics = vault_public_keys(server, key)
    stored = assert_fake_matches(fake, server, kms, key, publics, protection=protection,
                                 purposes=set(purpose.split(",")))
    if key_type.startswith("ecdsa"):
        curve = {"ecdsa-p256": "secp256r1", "ecdsa-p384": "secp384r1", "ecdsa-p521": "secp521r1"}[key_type]
        assert all(v.private_key.curve.name == curve for v in stored)
    else:
        assert all(v.private_key.key_size == int(key_type[4:]) for v in stored)
    # A rotation after distribution imports the third version the same way.
    cli(server, "write", "-f", f"keymgmt/key/{key}/rotate")
    publics = vault_public_keys(server, key)
    assert_fake_matches(fake, server, kms, key, publics, protection=protection,
                        purposes=set(purpose.split(",")))
    name = distribution(server, kms, key)["name"]
    cli(server, "delete", f"keymgmt/kms/{kms}/key/{key}")
    assert name in fake.deleted_keys()


@pytest.mark.parametrize("purpose", [
    "encrypt", "decrypt", "sign,verify", "wrap,unwrap", "encrypt,decrypt,wrap,unwrap",
    "encrypt,decrypt,sign,verify,wrap,unwrap",
])
def test_purpose_combinations(server: BaoServer, fake: AzureKeyVaultFake, kms: str, key: str,
                              purpose: str) -> None:
    cli(server, "write", f"keymgmt/key/{key}", "type=rsa-2048")
    distribute(server, kms, key, purpose, "hsm")
    assert_fake_matches(fake, server, kms, key, vault_public_keys(server, key), protection="hsm",
                        purposes=set(purpose.split(",")))


def test_every_purpose_combination(server: BaoServer, fake: AzureKeyVaultFake, kms: str, key: str) -> None:
    """All 63 non-empty subsets for RSA and all 3 for EC, each sent in a shuffled order."""
    rng = random.Random(7)
    cases = [("rsa-2048", combo) for n in range(1, 7)
             for combo in itertools.combinations(sorted(KEY_OPS), n)]
    cases += [("ecdsa-p256", combo) for n in (1, 2)
              for combo in itertools.combinations(["sign", "verify"], n)]
    for i, (key_type, combo) in enumerate(cases):
        name = f"{key}-p{i}"
        cli(server, "write", f"keymgmt/key/{name}", f"type={key_type}")
        sent = list(combo)
        rng.shuffle(sent)
        distribute(server, kms, name, ",".join(sent), "software")
        assert distribution(server, kms, name)["purpose"] == ",".join(sorted(combo))
        assert_fake_matches(fake, server, kms, name, vault_public_keys(server, name),
                            protection="software", purposes=set(combo))


@pytest.mark.parametrize(("key_type", "purpose", "message"), [
    ("aes256-gcm96", "encrypt,decrypt", "not supported by the azurekeyvault provider"),
    ("ecdsa-p256", "encrypt", "not supported for ecdsa-p256 keys by the azurekeyvault provider"),
])
def test_unimportable_requests_are_refused_before_any_call(
    server: BaoServer, fake: AzureKeyVaultFake, kms: str, key: str, key_type: str, purpose: str, message: str
) -> None:
    cli(server, "write", f"keymgmt/key/{key}", f"type={key_type}")
    before = len(fake.requests)
    result = distribute(server, kms, key, purpose, "hsm", check=False)
    assert result.returncode != 0
    assert "Code: 400" in result.stderr and message in result.stderr, result.stderr
    assert len(fake.requests) == before


def test_key_names_azure_cannot_hold_are_refused(server: BaoServer, fake: AzureKeyVaultFake, kms: str) -> None:
    key = f"under_score{time.monotonic_ns() % 10**6}"
    cli(server, "write", f"keymgmt/key/{key}", "type=rsa-2048")
    before = len(vault_requests(fake))
    result = distribute(server, kms, key, "sign", "hsm", check=False)
    assert "Code: 400" in result.stderr and "only letters, digits and hyphens" in result.stderr, result.stderr
    assert len(vault_requests(fake)) == before


# -- failures, retries and resuming ---------------------------------------------------


def import_path(server: BaoServer, kms: str, key: str) -> str:
    return "^/keys/" + re.escape(distribution(server, kms, key)["name"]) + "$"


def prepare(server: BaoServer, kms: str, key: str, versions: int = 1) -> None:
    cli(server, "write", f"keymgmt/key/{key}", "type=rsa-2048")
    for _ in range(versions - 1):
        cli(server, "write", "-f", f"keymgmt/key/{key}/rotate")


def test_one_key_exchange_key_per_distribution(server: BaoServer, fake: AzureKeyVaultFake, kms: str,
                                               key: str) -> None:
    prepare(server, kms, key, versions=3)
    kek_create = re.compile(r"^/keys/(keymgmt-kek-[0-9a-f]+)/create$")

    def keks_created() -> set[str]:
        return {m.group(1) for r in vault_requests(fake)
                if r.method == "POST" and (m := kek_create.match(r.path))}

    before = keks_created()
    distribute(server, kms, key, "encrypt,decrypt", "hsm")
    assert len(keks_created() - before) == 1, "three versions, one key-exchange key"
    cli(server, "write", "-f", f"keymgmt/key/{key}/rotate")
    assert len(keks_created() - before) == 2, "the rotation's import run has its own"
    assert fake.kek_count_alive() == 0
    assert_fake_matches(fake, server, kms, key, vault_public_keys(server, key), protection="hsm",
                        purposes={"encrypt", "decrypt"})


def test_versions_are_imported_in_parallel_and_the_latest_last(
    server: BaoServer, fake: AzureKeyVaultFake, kms: str, key: str
) -> None:
    """With the list permission, earlier versions go up to 8 at once; the latest goes last."""
    prepare(server, kms, key, versions=12)
    fake.set_latency(0.1)
    fake.reset_max_in_flight()
    try:
        distribute(server, kms, key, "sign", "hsm")
    finally:
        fake.set_latency(0)
    assert fake.max_in_flight(method="PUT") == 8, "bounded by KEYMGMT_IMPORT_CONCURRENCY's default"
    assert fake.max_in_flight(method="GET") == 2, "the deleted-key check and the listing go together"
    name = distribution(server, kms, key)["name"]
    # The SDK's first calls to a vault go unauthenticated and get the 401
    # challenge; the listing may be one of them, as it runs with the check
    # for a deleted key of the same name.
    lists = [r for r in vault_requests(fake)
             if r.method == "GET" and r.path == f"/keys/{name}/versions" and r.status != 401]
    assert len(lists) == 1, "versions are listed once per run"
    assert_fake_matches(fake, server, kms, key, vault_public_keys(server, key), protection="hsm",
                        purposes={"sign"})


def test_without_the_list_permission_versions_go_one_at_a_time(
    server: BaoServer, fake: AzureKeyVaultFake, kms: str, key: str
) -> None:
    prepare(server, kms, key, versions=5)

    def deny_list(original: Callable[[Any], Any], request: Any) -> Any:
        if request.method == "GET" and request.path.endswith("/versions"):
            return Response(403, {"error": {"code": "Forbidden",
                                            "message": "The user does not have keys list permission."}})
        return original(request)

    fake.set_latency(0.05)
    fake.reset_max_in_flight()
    try:
        with intercept(fake, deny_list):
            distribute(server, kms, key, "sign", "software")
    finally:
        fake.set_latency(0)
    assert fake.max_in_flight(method="PUT") == 1, "imports one at a time"
    assert_fake_matches(fake, server, kms, key, vault_public_keys(server, key), protection="software",
                        purposes={"sign"})
    assert any("may not list key versions" in srv.log_text() for srv in SERVERS)


def test_a_name_held_by_a_deleted_key_is_never_reused(
    server: BaoServer, fake: AzureKeyVaultFake, kms: str, key: str
) -> None:
    """Redistributing within the second of a removal would reuse `<key>-<seconds>`."""
    prepare(server, kms, key, versions=2)
    now = int(time.time())
    held = {f"{key}-{t}" for t in range(now, now + 3)}
    for name in held:
        fake.hold_deleted(name)
    distribute(server, kms, key, "sign", "hsm")
    first = distribution(server, kms, key)["name"]
    assert first not in held and int(first.rsplit("-", 1)[1]) >= now + 3, first
    assert_fake_matches(fake, server, kms, key, vault_public_keys(server, key), protection="hsm",
                        purposes={"sign"})
    # Remove and redistribute at once, twice: never the removed name.
    names = [first]
    for _ in range(2):
        cli(server, "delete", f"keymgmt/kms/{kms}/key/{key}")
        distribute(server, kms, key, "sign", "hsm")
        names.append(distribution(server, kms, key)["name"])
    assert len(set(names)) == 3, names
    assert set(names[:2]) <= set(fake.deleted_keys())

    # A collision the check misses (it says nothing is deleted) fails with
    # Azure's 409; the repeated command picks a free name.
    cli(server, "delete", f"keymgmt/kms/{kms}/key/{key}")
    blind = []

    def hide_deleted(original: Callable[[Any], Any], request: Any) -> Any:
        if request.method == "GET" and request.path.startswith("/deletedkeys/"):
            blind.append(request.path)
            return Response(404, {"error": {"code": "KeyNotFound", "message": "Deleted Key not found"}})
        return original(request)

    fake.hold_deleted(f"{key}-{int(time.time())}")
    fake.hold_deleted(f"{key}-{int(time.time()) + 1}")
    with intercept(fake, hide_deleted):
        result = distribute(server, kms, key, "sign", "hsm", check=False)
    if result.returncode != 0:
        assert "Code: 400" in result.stderr and "409" in result.stderr, result.stderr
    distribute(server, kms, key, "sign", "hsm")
    assert_fake_matches(fake, server, kms, key, vault_public_keys(server, key), protection="hsm",
                        purposes={"sign"})


def deleted_keks(fake: AzureKeyVaultFake) -> set[str]:
    return {n for n in fake.deleted_keys() if n.startswith("keymgmt-kek-")}


def test_exchange_keys_are_purged_after_deletion(
    server: BaoServer, fake: AzureKeyVaultFake, kms: str, key: str
) -> None:
    prepare(server, kms, key, versions=2)
    before = deleted_keks(fake)
    distribute(server, kms, key, "sign", "hsm")
    deadline = time.monotonic() + 10
    while deleted_keks(fake) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not deleted_keks(fake) - before, "the exchange key was purged"
    purges = [r for r in vault_requests(fake) if r.method == "DELETE" and r.path.startswith("/deletedkeys/keymgmt-kek-")]
    assert purges and all(r.status == 204 for r in purges[-1:])


def test_without_the_purge_permission_exchange_keys_stay_deleted(
    start_server: Callable[..., BaoServer], fake: AzureKeyVaultFake, key: str
) -> None:
    """Said once per provider; the deleted exchange keys stay until their retention ends."""
    srv = start_server()
    kms = "az-nopurge"
    configure_kms(srv, fake, kms)
    denied = []

    def deny_purge(original: Callable[[Any], Any], request: Any) -> Any:
        if request.method == "DELETE" and request.path.startswith("/deletedkeys/"):
            denied.append(request.path)
            return Response(403, {"error": {"code": "Forbidden",
                                            "message": "The user does not have keys purge permission."}})
        return original(request)

    before = deleted_keks(fake)
    with intercept(fake, deny_purge):
        for k in (f"{key}a", f"{key}b"):
            prepare(srv, kms, k, versions=1)
            distribute(srv, kms, k, "sign", "hsm")
            time.sleep(0.5)
    assert len(deleted_keks(fake) - before) == 2
    assert len(denied) == 1, "a denial is not retried, and not tried again"
    assert srv.log_text().count("may not purge deleted keys") == 1


@pytest.mark.parametrize("protection", ["hsm", "software"])
@pytest.mark.parametrize("fault", ["429", "500", "503", "drop"])
def test_transient_faults_are_retried(server: BaoServer, fake: AzureKeyVaultFake, kms: str, key: str,
                                      fault: str, protection: str) -> None:
    prepare(server, kms, key, versions=2)
    # The imports fail twice, and with BYOK the KEK's creation and deletion once.
    fake.inject("PUT", rf"^/keys/{re.escape(key)}-\d+$", fault, times=2)
    if protection == "hsm":
        fake.inject("POST", r"^/keys/keymgmt-kek-[0-9a-f]+/create$", fault, times=1)
        fake.inject("DELETE", r"^/keys/keymgmt-kek-", fault, times=1)
    started = time.monotonic()
    distribute(server, kms, key, "sign,verify", protection)
    elapsed = time.monotonic() - started
    assert_fake_matches(fake, server, kms, key, vault_public_keys(server, key),
                        protection=protection, purposes={"sign", "verify"})
    statuses = [r.status for r in vault_requests(fake) if r.method == "PUT" and r.path.startswith(f"/keys/{key}-")]
    assert statuses == [None if fault == "drop" else int(fault)] * 2 + [200, 200]
    if fault == "429":
        assert elapsed >= 2.0, "Retry-After: 1 was honoured"


def test_slow_responses_are_awaited(server: BaoServer, fake: AzureKeyVaultFake, kms: str, key: str) -> None:
    """Delays below the plugin's 30 s request timeout just make the request slower."""
    prepare(server, kms, key, versions=2)
    fake.inject("PUT", rf"^/keys/{re.escape(key)}-\d+$", "delay:1.5", times=2)
    fake.inject("POST", r"^/keys/keymgmt-kek-[0-9a-f]+/create$", "delay:1", times=1)
    started = time.monotonic()
    distribute(server, kms, key, "verify", "hsm")
    assert time.monotonic() - started >= 4.0
    assert_fake_matches(fake, server, kms, key, vault_public_keys(server, key),
                        protection="hsm", purposes={"verify"})


@contextlib.contextmanager
def intercept(fake: AzureKeyVaultFake, wrap: Callable[[Callable[[Any], Any], Any], Any]) -> Iterator[None]:
    """Interpose on the fake's vault handler (test-only): `wrap(original, request)` answers."""
    listener = fake._listeners["vault"]  # noqa: SLF001
    original = listener._handler  # noqa: SLF001
    listener._handler = lambda request: wrap(original, request)  # noqa: SLF001
    try:
        yield
    finally:
        listener._handler = original  # noqa: SLF001


@pytest.mark.parametrize("protection", ["hsm", "software"])
def test_a_lost_import_response_does_not_duplicate_versions(
    server: BaoServer, fake: AzureKeyVaultFake, kms: str, key: str, protection: str
) -> None:
    """An import that takes effect but whose answer never arrives is not repeated.

    The fake's own "drop" fault closes before processing; this models the
    worse case: processed, then the connection dies.
    """
    prepare(server, kms, key, versions=2)
    lost = []

    def lose(original: Callable[[Any], Any], request: Any) -> Any:
        response = original(request)
        if request.method == "PUT" and re.search(rf"^/keys/{re.escape(key)}-\d+$", request.path) \
                and response.status == 200 and len(lost) < 2:
            lost.append(request.path)
            return None
        return response

    with intercept(fake, lose):
        distribute(server, kms, key, "sign", protection)
    assert len(lost) == 2, "both imports lost their responses"
    assert_fake_matches(fake, server, kms, key, vault_public_keys(server, key),
                        protection=protection, purposes={"sign"})


def test_failure_part_way_is_resumed_without_duplicates(
    server: BaoServer, fake: AzureKeyVaultFake, kms: str, key: str
) -> None:
    prepare(server, kms, key, versions=3)
    # Versions 1 and 2 go together, then 3. Version 1 imports; version 2's
    # import fails on all 8 attempts the retry policy allows, so the request
    # fails before version 3. The import is told by its tag, not by its turn:
    # the two may reach the fake in either order.
    puts = []

    def fail_second(original: Callable[[Any], Any], request: Any) -> Any:
        if request.method == "PUT" and re.search(rf"^/keys/{re.escape(key)}-\d+$", request.path):
            version = json.loads(request.body)["tags"]["vault_version"]
            puts.append(version)
            if version == "2" and puts.count("2") <= 8:
                return Response(500, {"error": {"code": "InternalServerError", "message": "injected"}})
        return original(request)

    with intercept(fake, fail_second):
        result = distribute(server, kms, key, "decrypt", "hsm", check=False)
    assert result.returncode != 0
    assert "Code: 502" in result.stderr and f"writing to kms/{kms}/key/{key} again resumes" in result.stderr, result.stderr
    assert "after 8 attempts" in result.stderr, result.stderr
    assert sorted(puts) == ["1"] + ["2"] * 8, puts
    record = distribution(server, kms, key)
    assert list(record["versions"]) == ["1"], "what was imported is recorded"
    assert fake.kek_count_alive() == 0, "the KEK is deleted on failure too"
    # The same request completes the work.
    distribute(server, kms, key, "decrypt", "hsm")
    assert_fake_matches(fake, server, kms, key, vault_public_keys(server, key),
                        protection="hsm", purposes={"decrypt"})


@pytest.mark.parametrize(("method", "path", "permission", "step"), [
    ("POST", r"/keys/keymgmt-kek-[0-9a-f]+/create$", "create", "distribute"),
    ("PUT", r"/keys/{name}$", "import", "distribute"),
    ("PATCH", r"/keys/{name}/[0-9a-f]+$", "update", "min_enabled_version"),
    ("DELETE", r"/keys/{name}$", "delete", "remove"),
])
def test_a_missing_permission_is_named_and_changes_nothing(
    server: BaoServer, fake: AzureKeyVaultFake, kms: str, key: str,
    method: str, path: str, permission: str, step: str,
) -> None:
    """Azure answers 403 when the access policy lacks a key permission."""
    prepare(server, kms, key, versions=2)
    if step != "distribute":
        distribute(server, kms, key, "sign", "hsm")
    name = distribution(server, kms, key)["name"] if step != "distribute" else f"{key}-\\d+"
    pattern = re.compile("^" + path.format(name=name))
    denied = []

    def deny(original: Callable[[Any], Any], request: Any) -> Any:
        if request.method == method and pattern.search(request.path):
            denied.append(request.path)
            return Response(403, {"error": {"code": "Forbidden",
                                            "message": "The user does not have keys permission."}})
        return original(request)

    before = read_json(server, f"keymgmt/kms/{kms}/key/{key}") if step != "distribute" else None
    with intercept(fake, deny):
        if step == "distribute":
            result = distribute(server, kms, key, "sign", "hsm", check=False)
        elif step == "min_enabled_version":
            result = cli(server, "write", f"keymgmt/key/{key}", "min_enabled_version=2", check=False)
        else:
            result = cli(server, "delete", f"keymgmt/kms/{kms}/key/{key}", check=False)
    assert denied, "the denied call was made"
    assert len(denied) == 1, "a 403 is not retried"
    assert result.returncode != 0 and "Code: 400" in result.stderr, result.stderr
    assert f'the "{permission}" key permission' in result.stderr, result.stderr
    assert fake.kek_count_alive() == 0
    if step == "remove":
        assert read_json(server, f"keymgmt/kms/{kms}/key/{key}") == before, "the record is kept"
    # With the permission granted, the same request completes the work.
    if step == "distribute":
        distribute(server, kms, key, "sign", "hsm")
    elif step == "min_enabled_version":
        cli(server, "write", f"keymgmt/key/{key}", "min_enabled_version=2")
        assert [v.enabled for v in fake.versions(distribution(server, kms, key)["name"])] == [False, True]
        return
    else:
        cli(server, "delete", f"keymgmt/kms/{kms}/key/{key}")
        assert before is not None and before["name"] in fake.deleted_keys()
        return
    assert_fake_matches(fake, server, kms, key, vault_public_keys(server, key),
                        protection="hsm", purposes={"sign"})


def test_parallel_rotations_of_a_distributed_key(server: BaoServer, fake: AzureKeyVaultFake, kms: str,
                                                 key: str) -> None:
    """Ten rotations at once: each version reaches Azure once, in order, none lost."""
    cli(server, "write", f"keymgmt/key/{key}", "type=ecdsa-p256")
    distribute(server, kms, key, "sign,verify", "software")
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(
            lambda _: cli(server, "write", "-f", f"keymgmt/key/{key}/rotate", check=False), range(10)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    publics = vault_public_keys(server, key)
    assert sorted(publics) == list(range(1, 12))
    assert_fake_matches(fake, server, kms, key, publics, protection="software", purposes={"sign", "verify"})


def test_rotation_failure_is_reported_and_repeatable(
    server: BaoServer, fake: AzureKeyVaultFake, kms: str, key: str
) -> None:
    prepare(server, kms, key)
    distribute(server, kms, key, "encrypt", "hsm")
    name = distribution(server, kms, key)["name"]
    fake.inject("PUT", rf"^/keys/{re.escape(name)}$", "503", times=8)
    result = cli(server, "write", "-f", f"keymgmt/key/{key}/rotate", check=False)
    assert result.returncode != 0 and "Code: 502" in result.stderr, result.stderr
    assert "rotated to version 2 in Vault" in result.stderr, result.stderr
    assert f"writing to kms/{kms}/key/{key} again resumes" in result.stderr, result.stderr
    assert len(fake.versions(name)) == 1
    assert fake.kek_count_alive() == 0
    # Distributing again imports what the rotation could not.
    distribute(server, kms, key, "encrypt", "hsm")
    assert_fake_matches(fake, server, kms, key, vault_public_keys(server, key),
                        protection="hsm", purposes={"encrypt"})


# -- credentials -------------------------------------------------------------------------


def test_wrong_credentials_are_a_clear_error(server: BaoServer, fake: AzureKeyVaultFake, key: str) -> None:
    kms = f"az-wrong-{time.monotonic_ns() % 10**6}"
    wrong = "Wrong-Secret-0123456789"
    configure_kms(server, fake, kms, tenant_id=DOC_TENANT, client_id=DOC_CLIENT, client_secret=wrong)
    prepare(server, kms, key)
    result = distribute(server, kms, key, "sign", "hsm", check=False)
    assert "Code: 400" in result.stderr, result.stderr
    assert "authenticating to Azure failed" in result.stderr and "AADSTS7000215" in result.stderr
    assert wrong not in result.stderr
    assert wrong not in cli(server, "read", f"keymgmt/kms/{kms}").stdout
    SECRET_STRINGS.add(register_secret(wrong))


def test_managed_identity(server: BaoServer, fake: AzureKeyVaultFake, key: str) -> None:
    kms = f"az-msi-{time.monotonic_ns() % 10**6}"
    configure_kms(server, fake, kms, tenant_id=DOC_TENANT)
    prepare(server, kms, key)
    imds_before = len([r for r in fake.requests if r.service == "imds"])
    distribute(server, kms, key, "sign,verify", "hsm")
    assert len([r for r in fake.requests if r.service == "imds"]) > imds_before
    assert_fake_matches(fake, server, kms, key, vault_public_keys(server, key),
                        protection="hsm", purposes={"sign", "verify"})


def test_environment_variables_take_precedence(
    start_server: Callable[..., BaoServer], fake: AzureKeyVaultFake
) -> None:
    server = start_server(AZURE_CLIENT_SECRET=DOC_SECRET, AZURE_TENANT_ID=DOC_TENANT)
    configure_kms(server, fake, "env-kms", tenant_id="not-the-tenant", client_id=DOC_CLIENT,
                  client_secret="not-the-secret")
    prepare(server, "env-kms", "env-key")
    distribute(server, "env-kms", "env-key", "verify", "software")
    assert_fake_matches(fake, server, "env-kms", "env-key", vault_public_keys(server, "env-key"),
                        protection="software", purposes={"verify"})


def test_provider_reads_never_show_credentials(server: BaoServer, fake: AzureKeyVaultFake, kms: str) -> None:
    for args in (["read", f"keymgmt/kms/{kms}"], ["read", "-format=json", f"keymgmt/kms/{kms}"],
                 ["list", "keymgmt/kms"]):
        out = cli(server, *args).stdout
        for value in fake.credentials.values():
            assert value not in out


# -- nothing secret in the logs ---------------------------------------------------------------

SECRET_STRINGS: set[str] = set()


# -- drift: status and reconcile -------------------------------------------------


def spki_sha256(version: KeyVersion) -> str:
    """The fingerprint of what Azure holds, computed here with `cryptography`."""
    der = version.private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def status(server: BaoServer, kms: str, key: str) -> dict[str, Any]:
    return read_json(server, f"keymgmt/kms/{kms}/key/{key}/status")


def reconcile(server: BaoServer, kms: str, key: str, *args: str) -> dict[str, Any]:
    return json.loads(cli(server, "write", "-format=json", "-f", f"keymgmt/kms/{kms}/key/{key}/reconcile",
                          *args).stdout)["data"]


def kinds(state: dict[str, Any]) -> set[tuple[str, int | None]]:
    return {(d["kind"], d.get("version")) for d in state["drift"]}


def azure_state(fake: AzureKeyVaultFake, name: str) -> dict[str, bool]:
    """Each Azure version's enabled flag (earlier versions are imported in any order)."""
    return {v.version: v.enabled for v in fake.versions(name)}


def test_a_fresh_distribution_is_in_sync_with_independent_fingerprints(
    server: BaoServer, fake: AzureKeyVaultFake, kms: str, key: str
) -> None:
    for i, key_type in enumerate(EC_TYPES + ["rsa-2048"]):
        name = f"{key}-{i}"
        cli(server, "write", f"keymgmt/key/{name}", f"type={key_type}")
        distribute(server, kms, name, "sign,verify", "software" if i % 2 else "hsm")
        record = distribution(server, kms, name)
        stored = {v.version: v for v in fake.versions(record["name"])}
        state = status(server, kms, name)
        assert state["in_sync"] is True and state["drift"] == [], state
        assert state["current_provider_id"] == record["versions"]["1"]
        ours = read_json(server, f"keymgmt/key/{name}")["versions"]["1"]["fingerprint"]
        shown = state["versions"]["1"]
        assert shown["material"] == "matches", shown
        assert shown["provider_fingerprint"] == ours == spki_sha256(stored[record["versions"]["1"]]), key_type


def test_drift_is_reported_and_reconciled(server: BaoServer, fake: AzureKeyVaultFake, kms: str,
                                          key: str) -> None:
    prepare(server, kms, key, versions=3)
    cli(server, "write", f"keymgmt/key/{key}", "min_enabled_version=2")
    distribute(server, kms, key, "sign,verify", "hsm")
    record = distribution(server, kms, key)
    name, ids = record["name"], {int(v): azure for v, azure in record["versions"].items()}
    stored = {v.version: v for v in fake.versions(name)}

    state = status(server, kms, key)
    assert state["in_sync"] is True, state
    ours = read_json(server, f"keymgmt/key/{key}")["versions"]
    for v in (2, 3):
        shown = state["versions"][str(v)]
        assert shown["provider_fingerprint"] == ours[str(v)]["fingerprint"] == spki_sha256(stored[ids[v]])
        assert shown["fingerprint"] == ours[str(v)]["fingerprint"]
    # Key Vault shows nothing of a disabled version.
    assert state["versions"]["1"]["enabled"] is False
    assert state["versions"]["1"]["material"] == "unverifiable"
    assert state["versions"]["1"]["provider_fingerprint"] is None

    # Behind Vault's back: version 2 disabled, version 1 enabled, a foreign
    # version imported (it becomes the current one).
    fake.set_enabled_outside(name, ids[2], False)
    fake.set_enabled_outside(name, ids[1], True)
    foreign_key = ec.generate_private_key(ec.SECP256R1())
    foreign = fake.add_version_outside(name, foreign_key).version
    state = status(server, kms, key)
    assert state["in_sync"] is False
    assert kinds(state) == {("disabled_when_enabled", 2), ("enabled_when_disabled", 1),
                            ("foreign_current", None), ("not_current", 3)}, state["drift"]
    assert state["current_provider_id"] == foreign
    [shown] = state["foreign_versions"]
    assert shown["provider_id"] == foreign and shown["current"] is True and shown["enabled"] is True
    assert shown["provider_fingerprint"] == spki_sha256(fake.versions(name)[-1])
    assert state["versions"]["1"]["provider_fingerprint"] == spki_sha256(stored[ids[1]])

    # A dry run changes nothing in Azure and says what it would do.
    before, requests_before = azure_state(fake, name), len(vault_requests(fake))
    planned = reconcile(server, kms, key, "dry_run=true", "disable_foreign=true")
    assert azure_state(fake, name) == before
    assert {r.method for r in vault_requests(fake)[requests_before:]} == {"GET"}
    assert set(planned["actions"]) >= {"enable version 2", "disable version 1",
                                       f"disable foreign version {foreign}"}, planned["actions"]
    # Azure's newest version is current: nothing Vault does can change it.
    assert not any(a.startswith("make version") for a in planned["actions"]), planned["actions"]

    # Reconcile repairs the enabled flags and leaves the foreign version alone.
    done = reconcile(server, kms, key)
    assert f"disable foreign version {foreign}" not in done["actions"]
    assert azure_state(fake, name) == {ids[1]: False, ids[2]: True, ids[3]: True, foreign: True}
    assert kinds(done) == {("foreign_current", None), ("not_current", 3)}, done["drift"]

    # disable_foreign=true disables it and deletes nothing. Azure keeps it
    # current: it is the newest version, and Vault cannot add another.
    done = reconcile(server, kms, key, "disable_foreign=true")
    assert azure_state(fake, name) == {ids[1]: False, ids[2]: True, ids[3]: True, foreign: False}
    state = status(server, kms, key)
    assert state["current_provider_id"] == foreign
    [shown] = state["foreign_versions"]
    assert shown["enabled"] is False and shown["current"] is True
    drift = {d["kind"]: d for d in state["drift"]}
    assert drift["foreign_current"]["repair"] == "none", drift
    assert drift["not_current"]["repair"] == "none", drift
    assert "cannot change" in drift["not_current"]["detail"], drift
    assert len(fake.versions(name)) == 4, "no Azure version was added"

    # The key deleted outside Vault.
    fake.delete_outside(name)
    state = status(server, kms, key)
    assert state["key_exists"] is False
    assert kinds(state) == {("key_missing", None)}
    failed = cli(server, "write", "-f", f"keymgmt/kms/{kms}/key/{key}/reconcile", check=False)
    assert failed.returncode != 0
    assert "400" in failed.stderr and name in failed.stderr, failed.stderr


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


def secrets_of(fake: AzureKeyVaultFake) -> set[str]:
    found = {DOC_SECRET, *SECRET_STRINGS}
    found |= set(fake._issuer._tokens)  # noqa: SLF001 - every token the fake issued
    for name in fake.keys() + fake.deleted_keys():
        for version in fake.versions(name):
            if version.origin == "generated":
                continue
            private = version.private_key
            der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
            pkcs8 = base64.b64encode(der).decode()
            found |= {pkcs8[100:164], der.hex()[200:264]}
            numbers = private.private_numbers()
            if isinstance(private, rsa.RSAPrivateKey):
                for n in (numbers.d, numbers.p, numbers.q):
                    found |= {b64url(uint(n))[:40], uint(n).hex()[:40]}
            else:
                d = numbers.private_value.to_bytes((private.curve.key_size + 7) // 8, "big")
                found |= {b64url(d)[:40], d.hex()[:40]}
    return found


def test_zz_logs_hold_no_credentials_tokens_or_keys(fake: AzureKeyVaultFake) -> None:
    """Runs last in this module: every server log, plugin stderr included."""
    secrets = secrets_of(fake)
    assert len(secrets) > 50, "the suite imported keys and got tokens"
    assert SERVERS, "servers ran"
    assert any("azure key vault: imported version" in srv.log_text() for srv in SERVERS)
    for srv in SERVERS:
        log = srv.log_text()
        leaked = [s[:6] + "…" for s in secrets if s and s in log]
        assert not leaked, f"{srv.log_path} contains secrets: {leaked}"
