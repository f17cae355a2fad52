"""Black-box tests of the keymgmt key API (issue 3) under a real OpenBao server.

Everything goes through what a user has: the `vault` CLI (the venv symlink to
`bao`), hvac, and plain HTTP. Shapes and errors follow
../shared/reference/keymgmt-api.md §2.2 and §2.6. The KMS provider and
distribution endpoints are in test_kms_api.py.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import json
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import hvac
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from harness import MOUNT, BaoServer, cli, http, read_key, register_secret, stored_material

FreshServer = Callable[[], BaoServer]

# With no rotation schedule: `auto_rotate_period` reads 0 (as in transit), and
# `next_rotation_time` and `pending_pushes` are absent (test_rotation.py).
KEY_FIELDS = {"name", "type", "deletion_allowed", "latest_version", "min_enabled_version", "versions",
              "auto_rotate_period"}

# type -> what its public key must be (None: symmetric, no public key).
KEY_TYPES: dict[str, tuple[str, Any] | None] = {
    "aes256-gcm96": None,
    "rsa-2048": ("rsa", 2048),
    "rsa-3072": ("rsa", 3072),
    "rsa-4096": ("rsa", 4096),
    "ecdsa-p256": ("ec", ec.SECP256R1),
    "ecdsa-p384": ("ec", ec.SECP384R1),
    "ecdsa-p521": ("ec", ec.SECP521R1),
}

# RFC 3339 with fractional seconds (Go's RFC3339Nano: 1 to 9 digits).
RFC3339_FRACTIONAL = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{1,9}(Z|[+-]\d{2}:\d{2})$"
)


# -- helpers -------------------------------------------------------------------



def errors_of(resp: requests.Response) -> str:
    return "\n".join(resp.json().get("errors") or [])


def assert_http_error(resp: requests.Response, status: int, *fragments: str) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text)
    message = errors_of(resp)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def assert_cli_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    assert result.returncode != 0, result.stdout
    assert f"Code: {code}." in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    return result.stderr


def create_key(server: BaoServer, name: str, key_type: str | None = None, mount: str = MOUNT) -> None:
    args = ["write", "-f", f"{mount}/key/{name}"]
    if key_type is not None:
        args.append(f"type={key_type}")
    out = cli(server, *args)
    assert out.stdout == f"Success! Data written to: {mount}/key/{name}\n", out.stdout


def rotate(server: BaoServer, name: str) -> None:
    out = cli(server, "write", "-f", f"{MOUNT}/key/{name}/rotate")
    assert out.stdout == f"Success! Data written to: {MOUNT}/key/{name}/rotate\n", out.stdout



def read_key_http(server: BaoServer, name: str, session: requests.Session | None = None) -> dict[str, Any]:
    resp = (session or requests).get(
        f"{server.addr}/v1/{MOUNT}/key/{name}", headers={"X-Vault-Token": server.token}, timeout=120
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def list_keys(server: BaoServer, mount: str = MOUNT) -> list[str]:
    return json.loads(cli(server, "list", "-format=json", f"{mount}/key").stdout)


def parse_time(value: str) -> datetime.datetime:
    assert RFC3339_FRACTIONAL.match(value), f"not RFC 3339 with fractional seconds: {value!r}"
    parsed = datetime.datetime.fromisoformat(value)
    assert parsed.tzinfo is not None
    return parsed


def check_public_key(pem: str, key_type: str) -> object:
    """Parse with `cryptography` and check the algorithm and size; returns the key."""
    expected = KEY_TYPES[key_type]
    assert expected is not None
    assert pem.startswith("-----BEGIN PUBLIC KEY-----\n"), pem
    assert pem.endswith("-----END PUBLIC KEY-----\n"), pem
    key = serialization.load_pem_public_key(pem.encode())
    # SPKI, canonical encoding: re-serialising gives the same text.
    assert (
        key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        == pem
    )
    kind, param = expected
    if kind == "rsa":
        assert isinstance(key, rsa.RSAPublicKey), type(key)
        assert key.key_size == param
        assert key.public_numbers().e == 65537
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey), type(key)
        assert isinstance(key.curve, param), key.curve.name
    return key


def check_key(
    data: dict[str, Any],
    *,
    name: str,
    key_type: str,
    latest: int,
    min_enabled: int,
    deletion_allowed: bool = False,
    shown: list[int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Assert the read shape field by field; returns the versions map."""
    assert set(data) == KEY_FIELDS, sorted(data)
    assert data["name"] == name
    assert data["type"] == key_type
    assert data["deletion_allowed"] is deletion_allowed
    assert data["latest_version"] == latest
    assert data["min_enabled_version"] == min_enabled
    assert data["auto_rotate_period"] == 0
    versions = data["versions"]
    assert isinstance(versions, dict)
    expected = shown if shown is not None else list(range(min_enabled, latest + 1))
    assert sorted(versions, key=int) == [str(v) for v in expected]
    for version in versions.values():
        parse_time(version["creation_time"])
        if KEY_TYPES[key_type] is None:
            assert set(version) == {"creation_time", "fingerprint"}, version
            assert re.fullmatch(r"kcv:[0-9a-f]{6}", version["fingerprint"]), version
        else:
            assert set(version) == {"creation_time", "fingerprint", "public_key"}, version
            check_public_key(version["public_key"], key_type)
            spki = serialization.load_pem_public_key(version["public_key"].encode()).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            assert version["fingerprint"] == "sha256:" + hashlib.sha256(spki).hexdigest(), version
    return versions


def public_keys(versions: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {n: v["public_key"] for n, v in versions.items()}


def thread_session(server: BaoServer) -> Callable[[], requests.Session]:
    """One requests.Session per thread (a Session is not thread-safe)."""
    local = threading.local()

    def get() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers["X-Vault-Token"] = server.token
        return local.session

    return get


# -- create and read -----------------------------------------------------------


@pytest.mark.parametrize("key_type", list(KEY_TYPES))
def test_create_each_type_reads_back_exact_shape(
    server: BaoServer, client: hvac.Client, name: str, key_type: str
) -> None:
    before = datetime.datetime.now(datetime.timezone.utc)
    create_key(server, name, key_type)
    after = datetime.datetime.now(datetime.timezone.utc)

    data = read_key(server, name)
    versions = check_key(data, name=name, key_type=key_type, latest=1, min_enabled=1)
    assert list(versions) == ["1"]
    created = parse_time(versions["1"]["creation_time"])
    slack = datetime.timedelta(seconds=5)
    assert before - slack <= created <= after + slack, (before, created, after)

    # hvac and raw HTTP see the same thing as the CLI.
    assert client.read(f"{MOUNT}/key/{name}")["data"] == data
    assert read_key_http(server, name) == data


# The README's commands, run as an operator would: the fingerprint a read shows
# is what openssl computes from the version's public key (asymmetric) or from
# the key itself (AES, whose key check value an HSM reports).
OPENSSL_SPKI_SHA256 = "openssl pkey -pubin -in {pem} -outform DER | openssl dgst -sha256 -r"
OPENSSL_KCV = "head -c 16 /dev/zero | openssl enc -aes-256-ecb -nopad -K {key} | head -c 3 | od -An -tx1"


@pytest.mark.parametrize("key_type", list(KEY_TYPES))
def test_fingerprints_are_what_openssl_computes(
    server: BaoServer, name: str, key_type: str, tmp_path: Any
) -> None:
    create_key(server, name, key_type)
    rotate(server, name)
    data = json.loads(cli(server, "read", "-format=json", f"{MOUNT}/key/{name}").stdout)["data"]
    fingerprints = {n: v["fingerprint"] for n, v in data["versions"].items()}
    assert len(set(fingerprints.values())) == 2, fingerprints
    for n, version in data["versions"].items():
        if KEY_TYPES[key_type] is None:
            key = stored_material(server, name, int(n)).hex()
            command = OPENSSL_KCV.format(key=key)
            prefix = "kcv:"
        else:
            pem = tmp_path / f"v{n}.pem"
            pem.write_text(version["public_key"])
            command = OPENSSL_SPKI_SHA256.format(pem=pem)
            prefix = "sha256:"
        out = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True,
                             text=True, check=True).stdout
        theirs = "".join(out.split()).removesuffix("*stdin")
        assert version["fingerprint"] == prefix + theirs, (n, out)


def test_default_type_is_rsa_2048(server: BaoServer, name: str) -> None:
    create_key(server, name)  # `vault write -f keymgmt/key/<name>`
    check_key(read_key(server, name), name=name, key_type="rsa-2048", latest=1, min_enabled=1)


def test_put_and_post_both_create_and_update(server: BaoServer, name: str) -> None:
    resp = http(server, "POST", f"{MOUNT}/key/{name}-post", json={"type": "ecdsa-p256"})
    assert resp.status_code == 204, resp.text
    resp = http(server, "PUT", f"{MOUNT}/key/{name}-put", json={"type": "ecdsa-p384"})
    assert resp.status_code == 204, resp.text
    check_key(read_key_http(server, f"{name}-post"), name=f"{name}-post", key_type="ecdsa-p256", latest=1, min_enabled=1)
    check_key(read_key_http(server, f"{name}-put"), name=f"{name}-put", key_type="ecdsa-p384", latest=1, min_enabled=1)

    resp = http(server, "PUT", f"{MOUNT}/key/{name}-post", json={"deletion_allowed": True})
    assert resp.status_code == 204, resp.text
    assert read_key_http(server, f"{name}-post")["deletion_allowed"] is True


def test_list_keys(server: BaoServer, client: hvac.Client, name: str) -> None:
    names = [f"{name}-{i}" for i in range(3)]
    for n in names:
        create_key(server, n, "aes256-gcm96")

    listed = list_keys(server)
    assert set(names) <= set(listed)
    assert listed == sorted(listed)

    table = cli(server, "list", f"{MOUNT}/key").stdout.splitlines()
    assert table[:2] == ["Keys", "----"]
    assert table[2:] == listed

    via_list = http(server, "LIST", f"{MOUNT}/key")
    assert via_list.status_code == 200, via_list.text
    assert via_list.json()["data"] == {"keys": listed}
    # LIST may also be sent as GET ?list=true.
    via_get = http(server, "GET", f"{MOUNT}/key", params={"list": "true"})
    assert via_get.status_code == 200, via_get.text
    assert via_get.json()["data"] == {"keys": listed}
    assert client.list(f"{MOUNT}/key")["data"]["keys"] == listed


# -- rotate and min_enabled_version ---------------------------------------------


@pytest.mark.parametrize("key_type", ["rsa-2048", "ecdsa-p384", "aes256-gcm96"])
def test_rotate_adds_versions(server: BaoServer, name: str, key_type: str) -> None:
    create_key(server, name, key_type)
    first = read_key(server, name)["versions"]["1"]
    rotate(server, name)
    rotate(server, name)

    versions = check_key(read_key(server, name), name=name, key_type=key_type, latest=3, min_enabled=1)
    assert versions["1"] == first, "rotation changed an existing version"
    times = [parse_time(versions[n]["creation_time"]) for n in ("1", "2", "3")]
    assert times == sorted(times)
    if KEY_TYPES[key_type] is not None:
        assert len(set(public_keys(versions).values())) == 3, "rotation reused key material"


def test_min_enabled_version_hides_and_zero_restores(server: BaoServer, name: str) -> None:
    create_key(server, name, "ecdsa-p256")
    rotate(server, name)
    all_versions = read_key(server, name)["versions"]

    out = cli(server, "write", f"{MOUNT}/key/{name}", "min_enabled_version=2")
    assert out.stdout == f"Success! Data written to: {MOUNT}/key/{name}\n"
    versions = check_key(read_key(server, name), name=name, key_type="ecdsa-p256", latest=2, min_enabled=2)
    assert versions == {"2": all_versions["2"]}

    # A rotation keeps the minimum; the new version is shown.
    rotate(server, name)
    versions = check_key(read_key(server, name), name=name, key_type="ecdsa-p256", latest=3, min_enabled=2)
    assert versions["2"] == all_versions["2"]

    # 0 means "all versions"; the read reports the effective minimum, 1.
    cli(server, "write", f"{MOUNT}/key/{name}", "min_enabled_version=0")
    versions = check_key(read_key(server, name), name=name, key_type="ecdsa-p256", latest=3, min_enabled=1)
    assert versions["1"] == all_versions["1"] and versions["2"] == all_versions["2"]

    # The latest version itself is a valid minimum.
    cli(server, "write", f"{MOUNT}/key/{name}", "min_enabled_version=3")
    check_key(read_key(server, name), name=name, key_type="ecdsa-p256", latest=3, min_enabled=3)
    cli(server, "write", f"{MOUNT}/key/{name}", "min_enabled_version=1")
    check_key(read_key(server, name), name=name, key_type="ecdsa-p256", latest=3, min_enabled=1)


@pytest.mark.parametrize("value", ["5", "3", "-1", "abc", "1.5"])
def test_min_enabled_version_out_of_range_is_rejected(server: BaoServer, name: str, value: str) -> None:
    create_key(server, name, "ecdsa-p256")
    rotate(server, name)
    cli(server, "write", f"{MOUNT}/key/{name}", "min_enabled_version=2")
    before = read_key(server, name)

    bad = cli(server, "write", f"{MOUNT}/key/{name}", f"min_enabled_version={value}", check=False)
    assert_cli_error(bad, 400, "min_enabled_version")
    assert read_key(server, name) == before


def test_min_enabled_version_out_of_range_over_http(server: BaoServer, name: str) -> None:
    create_key(server, name, "aes256-gcm96")
    before = read_key_http(server, name)
    for value in (2, -1, "abc", 1 << 40):
        resp = http(server, "POST", f"{MOUNT}/key/{name}", json={"min_enabled_version": value})
        assert_http_error(resp, 400, "min_enabled_version")
    assert read_key_http(server, name) == before


# -- type ----------------------------------------------------------------------------


def test_unsupported_type_creates_nothing(server: BaoServer, name: str) -> None:
    bad = cli(server, "write", "-f", f"{MOUNT}/key/{name}", "type=nope", check=False)
    assert_cli_error(bad, 400, "unsupported key type")

    assert http(server, "GET", f"{MOUNT}/key/{name}").status_code == 404
    assert name not in list_keys(server)


def test_type_cannot_change(server: BaoServer, name: str) -> None:
    create_key(server, name, "ecdsa-p256")
    before = read_key(server, name)

    bad = cli(server, "write", f"{MOUNT}/key/{name}", "type=rsa-2048", check=False)
    assert_cli_error(bad, 400, "type")
    resp = http(server, "POST", f"{MOUNT}/key/{name}", json={"type": "aes256-gcm96"})
    assert_http_error(resp, 400, "type")

    assert read_key(server, name) == before


# -- deletion ----------------------------------------------------------------------


def test_delete_needs_deletion_allowed(server: BaoServer, name: str) -> None:
    create_key(server, name, "aes256-gcm96")

    refused = cli(server, "delete", f"{MOUNT}/key/{name}", check=False)
    assert_cli_error(refused, 400, "deletion")
    assert read_key(server, name)["deletion_allowed"] is False

    # CLI strings and JSON strings are coerced to booleans, as Vault's TypeBool does.
    out = cli(server, "write", f"{MOUNT}/key/{name}", "deletion_allowed=true")
    assert out.stdout == f"Success! Data written to: {MOUNT}/key/{name}\n"
    check_key(read_key(server, name), name=name, key_type="aes256-gcm96", latest=1, min_enabled=1,
              deletion_allowed=True)
    assert http(server, "POST", f"{MOUNT}/key/{name}", json={"deletion_allowed": "false"}).status_code == 204
    assert read_key(server, name)["deletion_allowed"] is False
    assert_http_error(http(server, "DELETE", f"{MOUNT}/key/{name}"), 400, "deletion")
    assert http(server, "POST", f"{MOUNT}/key/{name}", json={"deletion_allowed": True}).status_code == 204
    assert read_key(server, name)["deletion_allowed"] is True

    bad = cli(server, "write", f"{MOUNT}/key/{name}", "deletion_allowed=maybe", check=False)
    assert_cli_error(bad, 400, "deletion_allowed")
    assert read_key(server, name)["deletion_allowed"] is True

    out = cli(server, "delete", f"{MOUNT}/key/{name}")
    assert out.stdout == f"Success! Data deleted (if it existed) at: {MOUNT}/key/{name}\n"
    assert http(server, "GET", f"{MOUNT}/key/{name}").status_code == 404
    assert name not in list_keys(server)

    # The name is free again: a new key starts from version 1 with new material.
    create_key(server, name, "aes256-gcm96")
    check_key(read_key(server, name), name=name, key_type="aes256-gcm96", latest=1, min_enabled=1)


def test_delete_missing_key_succeeds(server: BaoServer, name: str) -> None:
    out = cli(server, "delete", f"{MOUNT}/key/{name}")
    assert out.stdout == f"Success! Data deleted (if it existed) at: {MOUNT}/key/{name}\n"
    assert http(server, "DELETE", f"{MOUNT}/key/{name}").status_code == 204


# -- missing keys ----------------------------------------------------------------------


def test_rotate_missing_key_is_404(server: BaoServer, name: str) -> None:
    bad = cli(server, "write", "-f", f"{MOUNT}/key/{name}/rotate", check=False)
    stderr = assert_cli_error(bad, 404)
    assert re.search(r'key ".*" not found', stderr), stderr
    assert f'key "{name}" not found' in stderr

    resp = http(server, "POST", f"{MOUNT}/key/{name}/rotate")
    message = assert_http_error(resp, 404)
    assert re.search(r'key ".*" not found', message), message

    assert http(server, "GET", f"{MOUNT}/key/{name}").status_code == 404


def test_read_missing_key_is_404(server: BaoServer, client: hvac.Client, name: str) -> None:
    resp = http(server, "GET", f"{MOUNT}/key/{name}")
    assert resp.status_code == 404, resp.text
    result = cli(server, "read", f"{MOUNT}/key/{name}", check=False)
    assert result.returncode == 2
    assert f"No value found at {MOUNT}/key/{name}" in result.stderr
    assert client.read(f"{MOUNT}/key/{name}") is None


def test_list_providers_of_undistributed_key_is_404(server: BaoServer, name: str) -> None:
    create_key(server, name, "rsa-2048")
    resp = http(server, "LIST", f"{MOUNT}/key/{name}/kms")
    assert resp.status_code == 404, resp.text
    result = cli(server, "list", f"{MOUNT}/key/{name}/kms", check=False)
    assert result.returncode == 2
    assert f"No value found at {MOUNT}/key/{name}/kms" in result.stderr
    # And for a key that does not exist at all.
    assert http(server, "LIST", f"{MOUNT}/key/{name}-missing/kms").status_code == 404


# -- unknown parameters -----------------------------------------------------------------


def test_unknown_field_is_a_warning(server: BaoServer, name: str) -> None:
    # A response that carries warnings is printed instead of "Success!", as with any Vault plugin.
    out = cli(server, "write", "-f", f"{MOUNT}/key/{name}", "type=ecdsa-p256", "colour=blue")
    assert "Endpoint ignored these unrecognized parameters: [colour]" in out.stderr, out.stderr
    check_key(read_key(server, name), name=name, key_type="ecdsa-p256", latest=1, min_enabled=1)

    resp = http(server, "POST", f"{MOUNT}/key/{name}", json={"deletion_allowed": True, "bogus": 1})
    assert resp.status_code == 200, resp.text
    assert resp.json()["warnings"] == ["Endpoint ignored these unrecognized parameters: [bogus]"]
    assert read_key(server, name)["deletion_allowed"] is True


# -- concurrency and scale ------------------------------------------------------------------


def test_twenty_parallel_rotations(server: BaoServer, name: str) -> None:
    create_key(server, name, "ecdsa-p256")
    session = thread_session(server)
    start = threading.Barrier(20)

    def rotate_once(_: int) -> int:
        start.wait(timeout=30)
        return session().post(f"{server.addr}/v1/{MOUNT}/key/{name}/rotate", timeout=120).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(rotate_once, range(20)))
    assert statuses == [204] * 20

    versions = check_key(read_key(server, name), name=name, key_type="ecdsa-p256", latest=21, min_enabled=1)
    assert len(set(public_keys(versions).values())) == 21, "versions share key material"


def test_parallel_updates_lose_no_rotation(server: BaoServer, name: str) -> None:
    """Updates rewrite the whole key record; racing rotations must not be overwritten."""
    create_key(server, name, "ecdsa-p256")
    session = thread_session(server)
    url = f"{server.addr}/v1/{MOUNT}/key/{name}"
    calls = (
        [("POST", f"{url}/rotate", None)] * 10
        + [("POST", url, {"deletion_allowed": i % 2 == 0}) for i in range(10)]
        + [("PUT", url, {"min_enabled_version": 1})] * 10
    )
    start = threading.Barrier(len(calls))

    def call(spec: tuple[str, str, dict[str, Any] | None]) -> int:
        method, target, body = spec
        start.wait(timeout=30)
        return session().request(method, target, json=body, timeout=120).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(calls)) as pool:
        statuses = list(pool.map(call, calls))
    assert statuses == [204] * len(calls)

    data = read_key(server, name)
    versions = check_key(data, name=name, key_type="ecdsa-p256", latest=11, min_enabled=1,
                         deletion_allowed=data["deletion_allowed"])
    assert len(set(public_keys(versions).values())) == 11


def test_ten_thousand_keys_list(
    server: BaoServer, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    mount = f"km-scale-{uuid.uuid4().hex[:8]}"
    cli(server, "secrets", "enable", f"-path={mount}", MOUNT)
    try:
        names = [f"key-{i:05d}" for i in range(10_000)]
        session = thread_session(server)

        def create(key: str) -> int:
            return session().post(
                f"{server.addr}/v1/{mount}/key/{key}", json={"type": "aes256-gcm96"}, timeout=120
            ).status_code

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            statuses = list(pool.map(create, names))
        create_seconds = time.monotonic() - started
        assert statuses == [204] * len(names)

        lister = requests.Session()
        lister.headers["X-Vault-Token"] = server.token
        timings = []
        for _ in range(5):
            t0 = time.monotonic()
            resp = lister.request("LIST", f"{server.addr}/v1/{mount}/key", timeout=120)
            timings.append(time.monotonic() - t0)
            assert resp.status_code == 200, resp.text[:500]
            assert resp.json()["data"]["keys"] == sorted(names)
        assert list_keys(server, mount=mount) == sorted(names)
        with capsys.disabled():
            print(
                f"\n[10,000 keys] created in {create_seconds:.1f}s (16 threads); "
                f"LIST latency min {min(timings) * 1000:.1f} ms, "
                f"median {sorted(timings)[len(timings) // 2] * 1000:.1f} ms"
            )
        # One key of the lot reads back normally.
        data = read_key(server, "key-04242", mount=mount)
        check_key(data, name="key-04242", key_type="aes256-gcm96", latest=1, min_enabled=1)
    finally:
        cli(server, "secrets", "disable", mount)


def test_hundred_versions(server: BaoServer, name: str) -> None:
    create_key(server, name, "ecdsa-p256")
    with requests.Session() as session:
        session.headers["X-Vault-Token"] = server.token
        for _ in range(99):
            resp = session.post(f"{server.addr}/v1/{MOUNT}/key/{name}/rotate", timeout=120)
            assert resp.status_code == 204, resp.text

    versions = check_key(read_key(server, name), name=name, key_type="ecdsa-p256", latest=100, min_enabled=1)
    assert len(versions) == 100
    assert len(set(public_keys(versions).values())) == 100

    cli(server, "write", f"{MOUNT}/key/{name}", "min_enabled_version=60")
    shown = check_key(read_key(server, name), name=name, key_type="ecdsa-p256", latest=100, min_enabled=60)
    assert shown == {n: v for n, v in versions.items() if int(n) >= 60}


# -- the documented sequence -----------------------------------------------------------------

DOC_KMS_SECRETS = (
    "a0454cd1-e28e-405e-bc50-7477fa8a00b7",
    "eR%HizuCVEpAKgeaUEx",
    "cd4bf224-d114-4f96-9bbc-b8f45751c43f",
)
register_secret(DOC_KMS_SECRETS[1])  # the client secret


def shell(server: BaoServer, text: str) -> subprocess.CompletedProcess[str]:
    """Run a docs command exactly as printed (quotes, backslash continuations) in bash."""
    return subprocess.run(
        ["bash", "-c", text],
        env=server.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_documented_sequence_verbatim(fresh_server: FreshServer) -> None:
    srv = fresh_server()
    # The fixture mounted keymgmt/ already; unmount so the docs' enable step runs as written.
    cli(srv, "secrets", "disable", MOUNT)

    steps = [
        (
            "vault secrets enable keymgmt",
            "Success! Enabled the keymgmt secrets engine at: keymgmt/\n",
        ),
        (
            'vault write -f keymgmt/key/example-key type="rsa-2048"',
            "Success! Data written to: keymgmt/key/example-key\n",
        ),
        (
            'vault write keymgmt/kms/example-kms \\\n'
            '    provider="azurekeyvault" \\\n'
            '    key_collection="keyvault-name" \\\n'
            '    credentials=client_id="a0454cd1-e28e-405e-bc50-7477fa8a00b7" \\\n'
            '    credentials=client_secret="eR%HizuCVEpAKgeaUEx" \\\n'
            '    credentials=tenant_id="cd4bf224-d114-4f96-9bbc-b8f45751c43f"',
            "Success! Data written to: keymgmt/kms/example-kms\n",
        ),
        (
            "vault write -f keymgmt/key/example-key/rotate",
            "Success! Data written to: keymgmt/key/example-key/rotate\n",
        ),
        (
            "vault write keymgmt/key/example-key min_enabled_version=2",
            "Success! Data written to: keymgmt/key/example-key\n",
        ),
    ]
    for command, expected in steps:
        result = shell(srv, command)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        assert result.stdout == expected, (command, result.stdout)
        assert result.stderr == "", (command, result.stderr)

    key = read_key(srv, "example-key")
    versions = check_key(key, name="example-key", key_type="rsa-2048", latest=2, min_enabled=2)
    assert list(versions) == ["2"]

    provider = json.loads(cli(srv, "read", "-format=json", "keymgmt/kms/example-kms").stdout)
    assert provider["data"] == {"provider": "azurekeyvault", "key_collection": "keyvault-name"}
    table = cli(srv, "read", "keymgmt/kms/example-kms").stdout
    raw = http(srv, "GET", "keymgmt/kms/example-kms").text
    for secret in DOC_KMS_SECRETS:
        assert secret not in json.dumps(provider)
        assert secret not in table
        assert secret not in raw
    assert "credentials" not in json.dumps(provider)
    assert json.loads(cli(srv, "list", "-format=json", "keymgmt/kms").stdout) == ["example-kms"]
    assert json.loads(cli(srv, "list", "-format=json", "keymgmt/key").stdout) == ["example-key"]

    # Step 6 of the docs, after the (cloud-only) distribution step: removal is idempotent.
    result = shell(srv, "vault delete keymgmt/kms/example-kms/key/example-key")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Success! Data deleted (if it existed) at: keymgmt/kms/example-kms/key/example-key\n"

    log = srv.log_text()
    for secret in DOC_KMS_SECRETS:
        assert secret not in log, f"credential {secret!r} in the server log"
