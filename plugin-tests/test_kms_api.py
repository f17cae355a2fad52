"""Black-box tests of KMS provider records and distribution validation (issue 3).

Provider records (keymgmt-api.md §2.3) and the checks a distribution request
passes before any cloud is called (§2.4, §3). Actual distribution to a cloud is
tested elsewhere, against fakes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import hvac
import pytest

from harness import MOUNT, BaoServer, cli, http, plugin_pids, register_secret, wait_for
from test_keys_api import (
    DOC_KMS_SECRETS,
    assert_cli_error,
    assert_http_error,
    create_key,
    shell,
)

SUPPORTED_TYPES = {
    "azurekeyvault": ["rsa-2048", "rsa-3072", "rsa-4096", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521"],
    "awskms": ["aes256-gcm96", "rsa-2048", "rsa-3072", "rsa-4096", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521"],
}
COLLECTIONS = {
    "azurekeyvault": "keyvault-name",
    "awskms": "us-west-1",
}


def secret() -> str:
    """A unique credential value, easy to search for in outputs and logs."""
    return register_secret(f"S3CR3T-{uuid.uuid4().hex}")


def create_provider(server: BaoServer, name: str, provider: str, **credentials: str) -> None:
    args = [f"provider={provider}", f"key_collection={COLLECTIONS[provider]}"]
    args += [f"credentials={k}={v}" for k, v in credentials.items()]
    out = cli(server, "write", f"{MOUNT}/kms/{name}", *args)
    assert out.stdout == f"Success! Data written to: {MOUNT}/kms/{name}\n", out.stdout


def read_provider(server: BaoServer, name: str) -> dict[str, object]:
    return json.loads(cli(server, "read", "-format=json", f"{MOUNT}/kms/{name}").stdout)["data"]


def list_providers(server: BaoServer) -> list[str]:
    resp = http(server, "LIST", f"{MOUNT}/kms")
    if resp.status_code == 404:
        return []
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]["keys"]


def assert_not_exposed(server: BaoServer, secrets: list[str] | tuple[str, ...], *texts: str) -> None:
    log = server.log_text()
    for value in secrets:
        for text in texts:
            assert value not in text, f"credential {value!r} echoed: {text[:500]}"
        assert value not in log, f"credential {value!r} in the server log"


# -- providers -------------------------------------------------------------------


def test_documented_provider_command(server: BaoServer, name: str) -> None:
    kms = f"example-kms-{name}"
    command = (
        f'vault write keymgmt/kms/{kms} \\\n'
        '    provider="azurekeyvault" \\\n'
        '    key_collection="keyvault-name" \\\n'
        '    credentials=client_id="a0454cd1-e28e-405e-bc50-7477fa8a00b7" \\\n'
        '    credentials=client_secret="eR%HizuCVEpAKgeaUEx" \\\n'
        '    credentials=tenant_id="cd4bf224-d114-4f96-9bbc-b8f45751c43f"'
    )
    result = shell(server, command)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"Success! Data written to: keymgmt/kms/{kms}\n"
    assert result.stderr == ""

    cli_json = cli(server, "read", "-format=json", f"{MOUNT}/kms/{kms}").stdout
    assert json.loads(cli_json)["data"] == {"provider": "azurekeyvault", "key_collection": "keyvault-name"}
    raw = http(server, "GET", f"{MOUNT}/kms/{kms}")
    assert raw.status_code == 200
    assert raw.json()["data"] == {"provider": "azurekeyvault", "key_collection": "keyvault-name"}
    table = cli(server, "read", f"{MOUNT}/kms/{kms}").stdout
    assert "credentials" not in cli_json + raw.text + table
    assert kms in list_providers(server)
    assert_not_exposed(server, DOC_KMS_SECRETS, cli_json, raw.text, table)


def unique_credentials(provider: str) -> dict[str, str]:
    """Valid credential values for `provider`, each unique so that it can be searched for."""
    if provider == "azurekeyvault":
        return {"tenant_id": str(uuid.uuid4()), "client_id": str(uuid.uuid4()), "client_secret": secret()}
    return {
        "access_key": "AKIA" + uuid.uuid4().hex[:16].upper(),
        "secret_key": secret(),
        "session_token": secret(),
        "endpoint": f"https://kms-{uuid.uuid4().hex[:12]}.example",
    }


@pytest.mark.parametrize("provider", ["azurekeyvault", "awskms"])
def test_credentials_as_json_object_and_as_pairs(
    server: BaoServer, client: hvac.Client, name: str, provider: str
) -> None:
    creds = unique_credentials(provider)
    body = {"provider": provider, "key_collection": COLLECTIONS[provider], "credentials": creds}
    resp = http(server, "POST", f"{MOUNT}/kms/{name}-obj", json=body)
    assert resp.status_code == 204, resp.text

    # The docs' JSON sample: an array of "k=v" strings.
    pairs = unique_credentials(provider)
    body = {
        "provider": provider,
        "key_collection": COLLECTIONS[provider],
        "credentials": [f"{k}={v}" for k, v in pairs.items()],
    }
    resp = http(server, "POST", f"{MOUNT}/kms/{name}-arr", json=body)
    assert resp.status_code == 204, resp.text

    # Credentials alone can be replaced later.
    newer = unique_credentials(provider)
    resp = http(server, "PUT", f"{MOUNT}/kms/{name}-obj", json={"credentials": newer})
    assert resp.status_code == 204, resp.text

    texts = []
    for kms in (f"{name}-obj", f"{name}-arr"):
        raw = http(server, "GET", f"{MOUNT}/kms/{kms}")
        assert raw.status_code == 200, raw.text
        assert raw.json()["data"] == {"provider": provider, "key_collection": COLLECTIONS[provider]}
        via_hvac = client.read(f"{MOUNT}/kms/{kms}")
        assert via_hvac["data"] == raw.json()["data"]
        texts += [raw.text, json.dumps(via_hvac), cli(server, "read", f"{MOUNT}/kms/{kms}").stdout]
    assert_not_exposed(server, [*creds.values(), *pairs.values(), *newer.values()], *texts)


def test_provider_and_key_collection_are_immutable(server: BaoServer, name: str) -> None:
    create_provider(server, name, "azurekeyvault", client_secret=secret())
    before = read_provider(server, name)

    bad = cli(server, "write", f"{MOUNT}/kms/{name}", "provider=awskms", check=False)
    assert_cli_error(bad, 400, "provider")
    bad = cli(server, "write", f"{MOUNT}/kms/{name}", "key_collection=other-vault", check=False)
    assert_cli_error(bad, 400, "key_collection")
    resp = http(server, "POST", f"{MOUNT}/kms/{name}",
                json={"provider": "awskms", "key_collection": COLLECTIONS["awskms"]})
    assert_http_error(resp, 400, "provider")
    assert read_provider(server, name) == before

    # Re-sending the same values is not a change.
    same = cli(server, "write", f"{MOUNT}/kms/{name}", "provider=azurekeyvault", "key_collection=keyvault-name")
    assert same.returncode == 0
    assert read_provider(server, name) == before


def test_unsupported_provider_is_rejected(server: BaoServer, name: str) -> None:
    bad = cli(server, "write", f"{MOUNT}/kms/{name}", "provider=hashicorpkms", "key_collection=x", check=False)
    assert_cli_error(bad, 400, "provider", "hashicorpkms")
    assert http(server, "GET", f"{MOUNT}/kms/{name}").status_code == 404
    assert name not in list_providers(server)


@pytest.mark.parametrize(
    "args,missing",
    [
        (["key_collection=keyvault-name"], "provider"),
        (["provider=azurekeyvault"], "key_collection"),
        (["provider=azurekeyvault", "key_collection="], "key_collection"),
    ],
)
def test_create_requires_provider_and_key_collection(
    server: BaoServer, name: str, args: list[str], missing: str
) -> None:
    bad = cli(server, "write", f"{MOUNT}/kms/{name}", *args, check=False)
    assert_cli_error(bad, 400, missing)
    assert http(server, "GET", f"{MOUNT}/kms/{name}").status_code == 404


def test_unknown_credential_key_is_rejected_without_echo(server: BaoServer, name: str) -> None:
    value = secret()
    bad = cli(
        server, "write", f"{MOUNT}/kms/{name}", "provider=awskms", "key_collection=us-west-1",
        f"credentials=secret_access_key={value}", check=False,
    )
    # The unknown key is not echoed either: it may be a pasted secret.
    stderr = assert_cli_error(bad, 400, "credentials", "1 unknown key", "access_key, secret_key")
    assert "secret_access_key" not in stderr
    assert http(server, "GET", f"{MOUNT}/kms/{name}").status_code == 404

    # `credentials=<secret>=1`: a secret pasted without its key name.
    pasted = cli(
        server, "write", f"{MOUNT}/kms/{name}", "provider=awskms", "key_collection=us-west-1",
        f"credentials={value}=1", check=False,
    )
    assert_cli_error(pasted, 400, "credentials")

    resp = http(server, "POST", f"{MOUNT}/kms/{name}", json={
        "provider": "azurekeyvault", "key_collection": "kv", "credentials": {"password": value},
    })
    assert_http_error(resp, 400, "credentials")
    assert "password" not in resp.text
    assert http(server, "GET", f"{MOUNT}/kms/{name}").status_code == 404

    # The same on an update of an existing provider: refused, nothing replaced.
    create_provider(server, name, "awskms", access_key="AKIAEXAMPLE", secret_key=secret())
    resp = http(server, "POST", f"{MOUNT}/kms/{name}", json={"credentials": {"private_key": value}})
    assert_http_error(resp, 400, "credentials")
    assert read_provider(server, name) == {"provider": "awskms", "key_collection": COLLECTIONS["awskms"]}

    assert_not_exposed(server, [value], bad.stdout, bad.stderr, pasted.stderr, resp.text)


@pytest.mark.parametrize(
    "provider,args,field",
    [
        ("azurekeyvault", ["key_collection=kv\x071"], "key_collection"),
        ("azurekeyvault", ["key_collection=https://kv1.vault.azure.net/#fragment"], "key_collection"),
        ("azurekeyvault", ["key_collection=kv1", "credentials=environment=Mars"], "credentials.environment"),
        ("azurekeyvault", ["key_collection=kv1", "credentials=client_id=my-app"], "credentials.client_id"),
        ("awskms", ["key_collection=Mars"], "key_collection"),
        ("awskms", ["key_collection=us-east-1", "credentials=endpoint=http://kms.example.com"], "credentials.endpoint"),
    ],
)
def test_provider_settings_are_checked_when_written(
    server: BaoServer, name: str, provider: str, args: list[str], field: str
) -> None:
    bad = cli(server, "write", f"{MOUNT}/kms/{name}", f"provider={provider}", *args, check=False)
    assert_cli_error(bad, 400, f"{field}: ")
    assert http(server, "GET", f"{MOUNT}/kms/{name}").status_code == 404


def test_list_and_delete_providers(server: BaoServer, client: hvac.Client, name: str) -> None:
    names = [f"{name}-{p}" for p in COLLECTIONS]
    for kms, provider in zip(names, COLLECTIONS):
        create_provider(server, kms, provider)
    listed = json.loads(cli(server, "list", "-format=json", f"{MOUNT}/kms").stdout)
    assert set(names) <= set(listed)
    assert listed == sorted(listed)
    assert client.list(f"{MOUNT}/kms")["data"]["keys"] == listed
    via_get = http(server, "GET", f"{MOUNT}/kms", params={"list": "true"})
    assert via_get.json()["data"] == {"keys": listed}

    out = cli(server, "delete", f"{MOUNT}/kms/{names[0]}")
    assert out.stdout == f"Success! Data deleted (if it existed) at: {MOUNT}/kms/{names[0]}\n"
    assert http(server, "GET", f"{MOUNT}/kms/{names[0]}").status_code == 404
    assert names[0] not in list_providers(server)
    assert set(names[1:]) <= set(list_providers(server))

    # Deleting a provider that does not exist succeeds.
    assert http(server, "DELETE", f"{MOUNT}/kms/{names[0]}").status_code == 204
    # Reading one that does not exist is a 404.
    assert cli(server, "read", f"{MOUNT}/kms/{names[0]}", check=False).returncode == 2


def test_credentials_never_logged(server: BaoServer, name: str) -> None:
    values = [str(uuid.uuid4()), str(uuid.uuid4()), secret(), secret()]
    create_provider(server, name, "azurekeyvault", tenant_id=values[0], client_id=values[1], client_secret=values[2])
    cli(server, "write", f"{MOUNT}/kms/{name}", f"credentials=client_secret={values[3]}")
    cli(server, "write", f"{MOUNT}/kms/{name}", f"credentials=nonsense={values[3]}", check=False)
    read = cli(server, "read", "-format=json", f"{MOUNT}/kms/{name}").stdout
    assert_not_exposed(server, values, read)


# -- distribution: validation that needs no cloud -----------------------------------------


def running_plugin(server: BaoServer) -> list[int]:
    # A request makes sure the plugin is running; a probe may still be exiting.
    http(server, "LIST", f"{MOUNT}/kms")

    def exactly_one() -> list[int]:
        pids = plugin_pids(server)
        return pids if len(pids) == 1 else []

    return wait_for(exactly_one, timeout=10)


@pytest.fixture
def plugin_alive(server: BaoServer) -> Iterator[None]:
    """Fails the test if the plugin process dies (e.g. crashes) during it."""
    before = running_plugin(server)
    assert before, f"expected one plugin process, found {plugin_pids(server)}"
    yield
    after = plugin_pids(server)
    assert after == before, f"the plugin process died during the test: {before} -> {after}"


@pytest.mark.parametrize(
    "provider,key_type,purpose",
    [
        ("azurekeyvault", "aes256-gcm96", "encrypt,decrypt"),
    ],
)
def test_distribute_unsupported_type_is_rejected(
    server: BaoServer, plugin_alive: None, name: str, provider: str, key_type: str, purpose: str
) -> None:
    kms = f"{name}-kms"
    create_provider(server, kms, provider)
    create_key(server, name, key_type)

    bad = cli(server, "write", f"{MOUNT}/kms/{kms}/key/{name}", f"purpose={purpose}", "protection=hsm", check=False)
    stderr = assert_cli_error(bad, 400, key_type, provider)
    # The message lists what is supported.
    supported = stderr.split("supported", 1)[-1] if "supported" in stderr else ""
    for allowed in SUPPORTED_TYPES[provider]:
        assert allowed in supported, (allowed, stderr)

    # Nothing was recorded: the key is not distributed, and the provider can go.
    assert http(server, "LIST", f"{MOUNT}/key/{name}/kms").status_code == 404
    assert http(server, "LIST", f"{MOUNT}/kms/{kms}/key").status_code == 404
    assert http(server, "GET", f"{MOUNT}/kms/{kms}/key/{name}").status_code == 404
    cli(server, "delete", f"{MOUNT}/kms/{kms}")
    assert http(server, "GET", f"{MOUNT}/kms/{kms}").status_code == 404


@pytest.mark.parametrize("purpose", ["decrypt,sign", "sign,encrypt", ["decrypt", "verify"]])
def test_aws_rsa_cannot_both_decrypt_and_sign(
    server: BaoServer, plugin_alive: None, name: str, purpose: str | list[str]
) -> None:
    kms = f"{name}-aws"
    create_provider(server, kms, "awskms")
    create_key(server, name, "rsa-3072")
    resp = http(server, "POST", f"{MOUNT}/kms/{kms}/key/{name}", json={"purpose": purpose})
    assert_http_error(resp, 400, "decrypt", "sign")
    assert http(server, "GET", f"{MOUNT}/kms/{kms}/key/{name}").status_code == 404


@pytest.mark.parametrize(
    "provider,key_type,purpose,offending",
    [
        ("awskms", "aes256-gcm96", "sign", "sign"),
        ("awskms", "aes256-gcm96", "encrypt,wrap", "wrap"),
        ("awskms", "ecdsa-p256", "decrypt", "decrypt"),
        ("azurekeyvault", "ecdsa-p384", "encrypt", "encrypt"),
    ],
)
def test_distribute_purpose_not_allowed_for_type(
    server: BaoServer, plugin_alive: None, name: str, provider: str, key_type: str, purpose: str,
    offending: str,
) -> None:
    kms = f"{name}-kms"
    create_provider(server, kms, provider)
    create_key(server, name, key_type)
    bad = cli(server, "write", f"{MOUNT}/kms/{kms}/key/{name}", f"purpose={purpose}", check=False)
    stderr = assert_cli_error(bad, 400, "purpose", "allowed")
    # The offending value is named as the user spelled it.
    assert f'"{offending}"' in stderr, stderr
    assert http(server, "GET", f"{MOUNT}/kms/{kms}/key/{name}").status_code == 404


@pytest.mark.parametrize(
    "body,field",
    [
        ({"purpose": "encrypt,bogus"}, "purpose"),
        ({"purpose": ["sign", "frobnicate"]}, "purpose"),
        ({"purpose": ""}, "purpose"),
        ({}, "purpose"),
        ({"purpose": "sign", "protection": "cloud"}, "protection"),
    ],
)
def test_distribute_bad_purpose_or_protection(
    server: BaoServer, plugin_alive: None, name: str, body: dict[str, object], field: str
) -> None:
    kms = f"{name}-az"
    create_provider(server, kms, "azurekeyvault")
    create_key(server, name, "rsa-2048")
    resp = http(server, "POST", f"{MOUNT}/kms/{kms}/key/{name}", json=body)
    assert_http_error(resp, 400, field)
    assert http(server, "GET", f"{MOUNT}/kms/{kms}/key/{name}").status_code == 404


def test_distribute_missing_key_or_provider_is_404(server: BaoServer, plugin_alive: None, name: str) -> None:
    kms = f"{name}-az"
    create_provider(server, kms, "azurekeyvault")
    create_key(server, name, "rsa-2048")

    bad = cli(server, "write", f"{MOUNT}/kms/{kms}/key/{name}-missing", "purpose=encrypt,decrypt", check=False)
    assert_cli_error(bad, 404, f'key "{name}-missing" not found')

    bad = cli(server, "write", f"{MOUNT}/kms/{kms}-missing/key/{name}", "purpose=encrypt,decrypt", check=False)
    assert_cli_error(bad, 404, f"{kms}-missing", "not found")

    assert http(server, "GET", f"{MOUNT}/kms/{kms}/key/{name}-missing").status_code == 404
    assert http(server, "LIST", f"{MOUNT}/kms/{kms}-missing/key").status_code == 404
    # Nothing distributed yet.
    assert http(server, "LIST", f"{MOUNT}/kms/{kms}/key").status_code == 404
    # Removing a distribution that does not exist succeeds.
    out = cli(server, "delete", f"{MOUNT}/kms/{kms}/key/{name}")
    assert out.stdout == f"Success! Data deleted (if it existed) at: {MOUNT}/kms/{kms}/key/{name}\n"


def test_delete_provider_with_nothing_distributed(server: BaoServer, name: str) -> None:
    kms = f"{name}-az"
    create_provider(server, kms, "azurekeyvault", client_secret=secret())
    create_key(server, name, "rsa-2048")
    out = cli(server, "delete", f"{MOUNT}/kms/{kms}")
    assert out.stdout == f"Success! Data deleted (if it existed) at: {MOUNT}/kms/{kms}\n"
    assert http(server, "GET", f"{MOUNT}/kms/{kms}").status_code == 404
    assert kms not in list_providers(server)
    # The key is untouched.
    assert http(server, "GET", f"{MOUNT}/key/{name}").status_code == 200
