"""Self-tests of the AWS test stack: LocalStack's KMS and the fault proxy in front of it.

The plugin's AWS tests are only worth what this stack is worth, so these
tests prove, without any plugin code: that LocalStack really imports key
material the way the AWS import specification describes (the wrapping here is
done independently with `cryptography`); that a test can check imported
material without trusting the importer; that the LocalStack behaviours
documented in LOCALSTACK.md (including where it differs from AWS) hold; that
the proxy relays bytes unchanged and injects each fault as a client sees it;
and that everything stays on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from fakes.aws_fault_proxy import AwsFaultProxy, CallRecord
from localstack import (
    DEFAULT_ACCOUNT_ID,
    VERSION,
    LocalStack,
    assert_symmetric_material,
    decrypt_symmetric_blob,
    inet_sockets,
    kms_client,
)

pytest_plugins = ["aws_fixtures"]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


# --- helpers: the import specification, done the way a client must do it ----------


def _oaep(algorithm: hashes.HashAlgorithm) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(algorithm), algorithm=algorithm, label=None)


def wrap(public_key_der: bytes, material: bytes, algorithm: str) -> bytes:
    """EncryptedKeyMaterial for GetParametersForImport's public key (key-transfer.md 4.4)."""
    public_key = serialization.load_der_public_key(public_key_der)
    assert isinstance(public_key, rsa.RSAPublicKey)
    digest = hashes.SHA256() if algorithm.endswith("SHA_256") else hashes.SHA1()
    if algorithm.startswith("RSAES_OAEP_"):
        return public_key.encrypt(material, _oaep(digest))
    if algorithm.startswith("RSA_AES_KEY_WRAP_"):
        ephemeral = os.urandom(32)
        return public_key.encrypt(ephemeral, _oaep(digest)) + aes_key_wrap_with_padding(ephemeral, material)
    raise ValueError(algorithm)


def import_material(
    kms: Any, key_id: str, material: bytes, algorithm: str = "RSAES_OAEP_SHA_256", wrapping_spec: str = "RSA_2048"
) -> dict[str, Any]:
    params = kms.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm=algorithm, WrappingKeySpec=wrapping_spec)
    return kms.import_key_material(
        KeyId=key_id,
        ImportToken=params["ImportToken"],
        EncryptedKeyMaterial=wrap(params["PublicKey"], material, algorithm),
        ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
    )


def pkcs8(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def spki(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def external_key(kms: Any, **kwargs: Any) -> str:
    return kms.create_key(Origin="EXTERNAL", **kwargs)["KeyMetadata"]["KeyId"]


def state(kms: Any, key_id: str) -> str:
    return kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"]


def error_of(call: Callable[..., Any], **kwargs: Any) -> tuple[int, str, str]:
    """(HTTP status, error code, message) of a call that must fail."""
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    response = caught.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"], response["Error"]["Message"]


def fresh_account() -> str:
    """A 12-digit access key id: LocalStack files its calls under that account, empty so far."""
    return "".join(secrets.choice("0123456789") for _ in range(12))


def key_ids(kms: Any) -> list[str]:
    return [k["KeyId"] for page in kms.get_paginator("list_keys").paginate() for k in page["Keys"]]


def is_loopback(host: str) -> bool:
    address = ipaddress.ip_address(host)
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


# --- LocalStack itself ----------------------------------------------------------------


def test_localstack_is_the_pinned_version_with_kms(localstack: LocalStack) -> None:
    health = localstack.health()
    assert health["version"] == VERSION
    assert health["services"]["kms"] in ("available", "running")
    # Measured about 5 s on the 2-core machine: most of it is LocalStack
    # building its request handling on the first call (the warm-up).
    assert localstack.startup_seconds < 60


def test_localstack_listens_only_on_its_loopback_port(localstack: LocalStack) -> None:
    """No DNS server on 53, no 4510-4559 service ports, nothing on 0.0.0.0 or ::."""
    pids = localstack.pids()
    assert pids, "LocalStack has no live process"
    sockets = localstack.sockets()
    listening = [s for s in sockets if s.listening]
    assert [(s.proto, s.local) for s in listening] == [("tcp", ("127.0.0.1", localstack.port))], sockets
    for s in sockets:
        assert is_loopback(s.local[0]), s
        assert s.remote[1] == 0 or is_loopback(s.remote[0]), f"LocalStack talks to {s.remote}: {s}"
    # Cross-check with ss(8): the same view from outside the process.
    ss = shutil.which("ss")
    assert ss is not None, "ss (iproute2) is needed for this check"
    out = subprocess.run([ss, "-H", "-ltunp"], capture_output=True, text=True, check=True).stdout
    ours = [line for line in out.splitlines() if any(f"pid={pid}," in line for pid in pids)]
    assert len(ours) == 1 and f"127.0.0.1:{localstack.port} " in ours[0], out


def test_private_instance_starts_and_stops_leaving_nothing(tmp_path: Path) -> None:
    outside = [Path("/var/lib/localstack"), Path("/etc/localstack"), Path("/usr/lib/localstack")]
    existed = {p: p.exists() for p in outside}
    instance = LocalStack(tmp_path / "ls")
    pids = instance.pids()
    assert pids and all(Path(f"/proc/{pid}").exists() for pid in pids)
    assert "Ready." in instance.log_text()
    instance.stop()
    assert instance.pids() == [] and instance.proc.returncode is not None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", instance.port), timeout=1).close()
    # Everything went under tmp_path (this machine's /.dockerenv would otherwise
    # make LocalStack write to the container paths).
    assert {p: p.exists() for p in outside} == existed
    assert (tmp_path / "ls" / "filesystem").is_dir()
    instance.stop()  # idempotent


def test_start_that_never_gets_ready_fails_with_the_log_tail(tmp_path: Path) -> None:
    """With its port taken, LocalStack says "Ready." but never serves; the wait says so, and cleans up."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(TimeoutError) as caught:
            LocalStack(tmp_path / "ls", port=port, timeout=4)
        assert time.monotonic() - started < 30
    message = str(caught.value)
    assert "not ready after 4s" in message and "LocalStack version: 2026.3.0" in message
    assert not [ls for ls in LocalStack.running if ls.port == port]


@pytest.mark.parametrize(
    ("access_key", "account"),
    [
        ("test", DEFAULT_ACCOUNT_ID),
        ("AKIAIOSFODNN7EXAMPLE", DEFAULT_ACCOUNT_ID),  # real-looking AWS keys are ignored
        ("123456789012", "123456789012"),  # a 12-digit key id is the account id
        ("LSIARZPUZDIKGB2VALC4", "123456789012"),  # LocalStack's own encoding
    ],
)
def test_access_key_id_selects_the_account(localstack: LocalStack, access_key: str, account: str) -> None:
    kms = localstack.boto3_client(access_key=access_key, secret_key="any secret")
    metadata = kms.create_key(Description="account probe")["KeyMetadata"]
    assert metadata["AWSAccountId"] == account
    assert metadata["Arn"] == f"arn:aws:kms:us-east-1:{account}:key/{metadata['KeyId']}"
    # Accounts are separate stores: another account does not see the key.
    other = localstack.boto3_client(access_key=fresh_account())
    assert metadata["KeyId"] not in key_ids(other)


# --- the import flows -----------------------------------------------------------------


def test_import_aes_256_and_check_the_material_independently(kms: Any) -> None:
    material = os.urandom(32)
    key_id = external_key(kms, KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")
    assert state(kms, key_id) == "PendingImport"
    result = import_material(kms, key_id, material, "RSAES_OAEP_SHA_256", "RSA_4096")
    assert result["KeyId"].endswith(key_id)
    metadata = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert (metadata["KeyState"], metadata["Origin"], metadata["ExpirationModel"]) == (
        "Enabled", "EXTERNAL", "KEY_MATERIAL_DOES_NOT_EXPIRE",
    )
    assert_symmetric_material(kms, key_id, material)
    # The check is not vacuous: other material fails it, both ways.
    with pytest.raises(InvalidTag):
        assert_symmetric_material(kms, key_id, os.urandom(32))
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"abc")["CiphertextBlob"]
    assert blob[:36].decode() == key_id
    assert decrypt_symmetric_blob(material, blob) == b"abc"


@pytest.mark.parametrize(
    ("spec", "usage", "generate"),
    [
        ("RSA_2048", "SIGN_VERIFY", lambda: rsa.generate_private_key(65537, 2048)),
        ("ECC_NIST_P256", "SIGN_VERIFY", lambda: ec.generate_private_key(ec.SECP256R1())),
    ],
    ids=["rsa-2048", "ecdsa-p256"],
)
def test_import_asymmetric_private_key(kms: Any, spec: str, usage: str, generate: Callable[[], PrivateKey]) -> None:
    private_key = generate()
    key_id = external_key(kms, KeySpec=spec, KeyUsage=usage)
    import_material(kms, key_id, pkcs8(private_key), "RSA_AES_KEY_WRAP_SHA_256", "RSA_4096")
    assert state(kms, key_id) == "Enabled"
    public = kms.get_public_key(KeyId=key_id)
    assert public["PublicKey"] == spki(private_key)
    assert (public["KeySpec"], public["KeyUsage"]) == (spec, usage)
    # KMS signs with the imported private key: its signature verifies under ours.
    message = b"signed by the imported key"
    if spec.startswith("RSA"):
        signature = kms.sign(KeyId=key_id, Message=message, SigningAlgorithm="RSASSA_PSS_SHA_256")["Signature"]
        assert isinstance(private_key, rsa.RSAPrivateKey)
        private_key.public_key().verify(
            signature, message, padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH), hashes.SHA256()
        )
    else:
        signature = kms.sign(KeyId=key_id, Message=message, SigningAlgorithm="ECDSA_SHA_256")["Signature"]
        assert isinstance(private_key, ec.EllipticCurvePrivateKey)
        private_key.public_key().verify(signature, message, ec.ECDSA(hashes.SHA256()))


# --- LocalStack behaviours the plugin's tests rely on (LOCALSTACK.md) -----------------


def test_finding_pending_import_keys(kms: Any) -> None:
    key_id = external_key(kms)
    arn = kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    assert error_of(kms.encrypt, KeyId=key_id, Plaintext=b"x") == (400, "KMSInvalidStateException", f"{arn} is pending import.")
    # AWS refuses these with KMSInvalidStateException; LocalStack changes the state.
    kms.disable_key(KeyId=key_id)
    assert state(kms, key_id) == "Disabled"
    other = external_key(kms)
    kms.enable_key(KeyId=other)
    assert state(kms, other) == "Enabled"  # with no imported material at all
    # GetPublicKey answers for a PendingImport asymmetric key, with a throwaway key.
    private_key = ec.generate_private_key(ec.SECP256R1())
    ec_key = external_key(kms, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    assert kms.get_public_key(KeyId=ec_key)["PublicKey"] != spki(private_key)


def test_finding_deletion_errors(kms: Any) -> None:
    key_id = external_key(kms)
    arn = kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    scheduled = kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert (scheduled["KeyState"], scheduled["PendingWindowInDays"]) == ("PendingDeletion", 7)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["DeletionDate"]
    pending = (400, "KMSInvalidStateException", f"{arn} is pending deletion.")
    assert error_of(kms.schedule_key_deletion, KeyId=key_id, PendingWindowInDays=7) == pending
    assert error_of(kms.disable_key, KeyId=key_id) == pending
    assert error_of(kms.enable_key, KeyId=key_id) == pending
    assert error_of(kms.schedule_key_deletion, KeyId=external_key(kms), PendingWindowInDays=6) == (
        400, "ValidationException", "PendingWindowInDays should be between 7 and 30, but it is 6",
    )
    missing = "11111111-2222-3333-4444-555555555555"
    assert error_of(kms.describe_key, KeyId=missing) == (
        400, "NotFoundException", f"Key 'arn:aws:kms:us-east-1:{DEFAULT_ACCOUNT_ID}:key/{missing}' does not exist",
    )
    assert kms.cancel_key_deletion(KeyId=key_id)["KeyId"] == arn
    assert state(kms, key_id) == "Disabled"  # AWS returns a never-imported key to PendingImport


def test_finding_symmetric_reimport(kms: Any) -> None:
    material = os.urandom(32)
    key_id = external_key(kms)
    import_material(kms, key_id, material)
    # The same material again is accepted once (LocalStack stages it as a pending
    # rotation) and refused after that; AWS accepts it any number of times.
    import_material(kms, key_id, material)
    status, code, message = error_of(import_material, kms=kms, key_id=key_id, material=material)
    assert (status, code) == (400, "KMSInvalidStateException")
    assert "cannot be imported" in message and "is pending rotation" in message
    assert_symmetric_material(kms, key_id, material)
    # Different material is accepted but never used (AWS: IncorrectKeyMaterialException).
    other = external_key(kms)
    import_material(kms, other, material)
    import_material(kms, other, os.urandom(32))
    assert_symmetric_material(kms, other, material)
    # The length is not checked: 16 bytes make an AES-128 key.
    short = os.urandom(16)
    short_key = external_key(kms)
    import_material(kms, short_key, short)
    assert state(kms, short_key) == "Enabled"
    assert_symmetric_material(kms, short_key, short)


def test_finding_asymmetric_material_is_not_checked_against_the_key_spec(kms: Any) -> None:
    """An EC private key imports into an RSA_2048 key: only GetPublicKey shows what went in."""
    ec_private = ec.generate_private_key(ec.SECP256R1())
    key_id = external_key(kms, KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")
    import_material(kms, key_id, pkcs8(ec_private), "RSA_AES_KEY_WRAP_SHA_256", "RSA_4096")
    public = kms.get_public_key(KeyId=key_id)
    assert public["KeySpec"] == "RSA_2048" and public["PublicKey"] == spki(ec_private)
    # And a second import of other material replaces the key (AWS refuses it).
    rsa_private = rsa.generate_private_key(65537, 2048)
    import_material(kms, key_id, pkcs8(rsa_private), "RSA_AES_KEY_WRAP_SHA_256", "RSA_4096")
    assert kms.get_public_key(KeyId=key_id)["PublicKey"] == spki(rsa_private)


def test_finding_multi_region_replicas(localstack: LocalStack, kms: Any) -> None:
    replica_region = localstack.boto3_client("eu-west-1")
    material = os.urandom(32)
    # Replicated before the import: the replica is PendingImport, as on AWS,
    # and takes the same material by its own import.
    key_id = external_key(kms, MultiRegion=True)
    assert key_id.startswith("mrk-")
    replica = kms.replicate_key(KeyId=key_id, ReplicaRegion="eu-west-1")["ReplicaKeyMetadata"]
    assert replica["KeyState"] == "PendingImport"
    assert replica["Arn"] == f"arn:aws:kms:eu-west-1:{DEFAULT_ACCOUNT_ID}:key/{key_id}"
    assert replica["MultiRegionConfiguration"]["MultiRegionKeyType"] == "REPLICA"
    import_material(replica_region, key_id, material)
    assert state(kms, key_id) == "PendingImport"  # the primary is untouched
    import_material(kms, key_id, material)
    ciphertext = replica_region.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=ciphertext, KeyId=key_id)["Plaintext"] == b"x"
    # Replicated after the import: LocalStack copies the material (AWS does not).
    later = external_key(kms, MultiRegion=True)
    import_material(kms, later, material)
    replica = kms.replicate_key(KeyId=later, ReplicaRegion="eu-west-1")["ReplicaKeyMetadata"]
    assert replica["KeyState"] == "Enabled"
    assert_symmetric_material(replica_region, later, material)
    assert error_of(kms.replicate_key, KeyId=later, ReplicaRegion="eu-west-1")[:2] == (400, "AlreadyExistsException")
    # Deleting the primary leaves the replica alone (AWS: PendingReplicaDeletion).
    kms.schedule_key_deletion(KeyId=later, PendingWindowInDays=7)
    assert (state(kms, later), state(replica_region, later)) == ("PendingDeletion", "Enabled")


def test_finding_tags_aliases_and_paging(localstack: LocalStack) -> None:
    kms = localstack.boto3_client(access_key=fresh_account())
    key_id = external_key(kms, Tags=[{"TagKey": "vault_version", "TagValue": "1"}])
    kms.tag_resource(KeyId=key_id, Tags=[{"TagKey": "vault_version", "TagValue": "2"}, {"TagKey": "b", "TagValue": "x"}])
    assert kms.list_resource_tags(KeyId=key_id)["Tags"] == [
        {"TagKey": "vault_version", "TagValue": "2"}, {"TagKey": "b", "TagValue": "x"},
    ]
    first = kms.list_resource_tags(KeyId=key_id, Limit=1)
    assert first["Truncated"] and kms.list_resource_tags(KeyId=key_id, Marker=first["NextMarker"])["Tags"] == [
        {"TagKey": "b", "TagValue": "x"}
    ]
    # ListKeys pages in creation order with Limit/NextMarker/Truncated.
    created = [key_id] + [kms.create_key()["KeyMetadata"]["KeyId"] for _ in range(4)]
    page = kms.list_keys(Limit=2)
    seen = [k["KeyId"] for k in page["Keys"]]
    while page.get("Truncated"):
        page = kms.list_keys(Limit=2, Marker=page["NextMarker"])
        seen += [k["KeyId"] for k in page["Keys"]]
    assert seen == created
    # Aliases.
    alias = "alias/hashicorp/stack-test-1"
    kms.create_alias(AliasName=alias, TargetKeyId=key_id)
    assert error_of(kms.create_alias, AliasName=alias, TargetKeyId=created[1])[:2] == (400, "AlreadyExistsException")
    assert [a["AliasName"] for a in kms.list_aliases(KeyId=key_id)["Aliases"]] == [alias]
    kms.update_alias(AliasName=alias, TargetKeyId=created[1])
    assert kms.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"] == created[1]
    kms.delete_alias(AliasName=alias)
    assert kms.list_aliases(KeyId=created[1])["Aliases"] == []
    account = kms.describe_key(KeyId=key_id)["KeyMetadata"]["AWSAccountId"]
    assert error_of(kms.delete_alias, AliasName=alias) == (
        400, "NotFoundException", f"Alias arn:aws:kms:us-east-1:{account}:alias/hashicorp/stack-test-1 is not found",
    )


# --- the fault proxy ------------------------------------------------------------------


class _RecordingUpstream:
    """A raw HTTP/1.1 server that keeps every byte it receives and answers canned bytes."""

    def __init__(self, responses: list[bytes]) -> None:
        self.received = bytearray()
        self.connections = 0
        self._responses = list(responses)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self._responses:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(10)
                buffered = b""
                while self._responses:
                    # Enough for these tests: each request ends with an empty
                    # line (no body), a Content-Length body, or "0\r\n\r\n".
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buffered += chunk
                    self.received += chunk
                    if self._request_complete(buffered):
                        buffered = b""
                        conn.sendall(self._responses.pop(0))

    @staticmethod
    def _request_complete(data: bytes) -> bool:
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            return False
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            # The last chunk ("0"), optional trailers, then an empty line.
            return (body.startswith(b"0") or b"\r\n0\r\n" in body or b"\r\n0;" in body) and body.endswith(b"\r\n\r\n")
        for line in lower.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                return len(body) >= int(line.split(b":")[1])
        return True

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def recording_upstream() -> Iterator[Callable[[list[bytes]], _RecordingUpstream]]:
    made: list[_RecordingUpstream] = []

    def make(responses: list[bytes]) -> _RecordingUpstream:
        made.append(_RecordingUpstream(responses))
        return made[-1]

    yield make
    for upstream in made:
        upstream.close()


def _recv_response(sock: socket.socket, expected: int) -> bytes:
    data = b""
    while len(data) < expected:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_proxy_relays_bytes_unchanged_with_keep_alive_and_chunking(
    recording_upstream: Callable[[list[bytes]], _RecordingUpstream],
) -> None:
    # Odd header case and order, a duplicate header, a body: all must arrive as sent.
    first = (
        b"POST /?x=1 HTTP/1.1\r\nhost: 127.0.0.1\r\nX-Amz-Target: TrentService.ListKeys\r\n"
        b"content-TYPE: application/x-amz-json-1.1\r\nX-Dup: a\r\nX-Dup: b\r\nContent-Length: 2\r\n\r\n{}"
    )
    second = (
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Amz-Target: TrentService.DescribeKey\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\n{\"K\r\n5\r\ney\":1\r\n1\r\n}\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    response_1 = b"HTTP/1.1 200 OK\r\nx-amzn-RequestId: r1\r\nContent-Length: 12\r\nX-Odd:  spaced \r\n\r\n{\"Keys\": []}"
    response_2 = b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n"
    upstream = recording_upstream([response_1, response_2])
    with AwsFaultProxy(upstream.url) as proxy, socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
        client.sendall(first)
        assert _recv_response(client, len(response_1)) == response_1
        client.sendall(second)
        assert _recv_response(client, len(response_2)) == response_2
        assert bytes(upstream.received) == first + second
        # One client connection, one upstream connection, for both requests.
        assert proxy.connections_accepted == 1 and upstream.connections == 1
        assert [(c.action, c.status, c.fault) for c in proxy.calls()] == [
            ("ListKeys", 200, None), ("DescribeKey", 400, None),
        ]


def test_proxy_answers_expect_100_continue_itself(
    recording_upstream: Callable[[list[bytes]], _RecordingUpstream],
) -> None:
    request_head = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    upstream = recording_upstream([response])
    with AwsFaultProxy(upstream.url) as proxy, socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
        client.sendall(request_head)
        assert _recv_response(client, 25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.sendall(b"{}")
        assert _recv_response(client, len(response)) == response
    assert bytes(upstream.received) == request_head + b"{}"


def test_throttle_body_is_exactly_aws_shape(kms_proxy: AwsFaultProxy) -> None:
    kms_proxy.add_fault("ListKeys", "throttle")
    conn = http.client.HTTPConnection("127.0.0.1", kms_proxy.port, timeout=10)
    try:
        conn.request("POST", "/", body=b"{}", headers={"X-Amz-Target": "TrentService.ListKeys"})
        response = conn.getresponse()
        assert (response.status, response.getheader("x-amzn-ErrorType")) == (400, "ThrottlingException")
        assert response.getheader("Content-Type") == "application/x-amz-json-1.1"
        assert response.read() == b'{"__type":"ThrottlingException","message":"Rate exceeded"}'
        assert response.getheader("Connection") is None  # the connection stays usable
        conn.request("POST", "/", body=b"{}", headers={"X-Amz-Target": "TrentService.ListKeys"})
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    assert kms_proxy.connections_accepted == 1


def test_proxy_answers_like_localstack_itself(localstack: LocalStack, kms_proxy: AwsFaultProxy) -> None:
    account = fresh_account()
    request_headers = {
        "X-Amz-Target": "TrentService.ListKeys",
        "Content-Type": "application/x-amz-json-1.1",
        "Authorization": f"AWS4-HMAC-SHA256 Credential={account}/20260101/us-east-1/kms/aws4_request, "
        "SignedHeaders=host, Signature=0",
    }

    def raw(port: int) -> tuple[int, list[str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("POST", "/", body=b"{}", headers=request_headers)
            response = conn.getresponse()
            return response.status, [name for name, _ in response.getheaders()], response.read()
        finally:
            conn.close()

    assert raw(kms_proxy.port) == raw(localstack.port)
    # And a whole import, through the proxy, as a client sees it.
    via_proxy = localstack.boto3_client(endpoint=kms_proxy.endpoint, access_key=account, retries=False)
    material = os.urandom(32)
    key_id = external_key(via_proxy)
    import_material(via_proxy, key_id, material, "RSAES_OAEP_SHA_256", "RSA_4096")
    assert_symmetric_material(localstack.boto3_client(access_key=account), key_id, material)
    assert kms_proxy.counts() == {
        "ListKeys": 1, "CreateKey": 1, "GetParametersForImport": 1, "ImportKeyMaterial": 1,
    }
    assert all(c.status == 200 and c.fault is None and c.region == "us-east-1" for c in kms_proxy.calls())


def test_proxy_keeps_localstack_connection_semantics_or_keeps_alive(localstack: LocalStack) -> None:
    # By default LocalStack's "Connection: close" reaches the client: one connection per call.
    with AwsFaultProxy(localstack.endpoint) as proxy:
        kms = localstack.boto3_client(endpoint=proxy.endpoint, retries=False)
        for _ in range(3):
            kms.list_keys(Limit=1)
        assert proxy.connections_accepted == 3
    # upstream_keep_alive: both hops stay open, as with AWS.
    with AwsFaultProxy(localstack.endpoint, upstream_keep_alive=True) as proxy:
        kms = localstack.boto3_client(endpoint=proxy.endpoint, retries=False)
        for _ in range(3):
            response = kms.list_keys(Limit=1)
            assert "connection" not in response["ResponseMetadata"]["HTTPHeaders"]
        assert proxy.connections_accepted == 1


@pytest.mark.parametrize(
    ("kind", "status", "code", "message"),
    [
        ("throttle", 400, "ThrottlingException", "Rate exceeded"),
        ("500", 500, "KMSInternalException", "The request was rejected because an internal exception occurred. The request can be retried."),
        ("503", 503, "ServiceUnavailableException", "Service Unavailable"),
        ("dependency-timeout", 503, "DependencyTimeoutException", "The system timed out while trying to fulfill the request. You can retry the request."),
    ],
)
def test_fault_errors_are_answered_without_forwarding(
    localstack: LocalStack, kms_proxy: AwsFaultProxy, kind: str, status: int, code: str, message: str
) -> None:
    account = fresh_account()
    kms = localstack.boto3_client(endpoint=kms_proxy.endpoint, access_key=account, retries=False)
    kms_proxy.add_fault("CreateKey", kind)
    with pytest.raises(ClientError) as caught:
        kms.create_key()
    response = caught.value.response
    assert (response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"], response["Error"]["Message"]) == (
        status, code, message,
    )
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"] == code
    assert key_ids(localstack.boto3_client(access_key=account)) == []  # LocalStack never saw it
    kms.create_key()  # the fault was used up
    assert [(c.action, c.status, c.fault) for c in kms_proxy.calls("CreateKey")] == [
        ("CreateKey", status, kind), ("CreateKey", 200, None),
    ]


def test_fault_access_denied_names_the_action_and_key(localstack: LocalStack, kms_proxy: AwsFaultProxy) -> None:
    account = fresh_account()
    kms = localstack.boto3_client(endpoint=kms_proxy.endpoint, access_key=account, retries=False)
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    kms_proxy.add_fault("DisableKey", "access-denied")
    kms_proxy.add_fault("CreateKey", "access-denied")
    assert error_of(kms.disable_key, KeyId=key_id) == (
        400, "AccessDeniedException",
        f"User: arn:aws:iam::{account}:user/keymgmt-test is not authorized to perform: kms:DisableKey on resource: "
        f"arn:aws:kms:us-east-1:{account}:key/{key_id} because no identity-based policy allows the kms:DisableKey action",
    )
    assert state(kms, key_id) == "Enabled"
    assert error_of(kms.create_key)[2] == (
        f"User: arn:aws:iam::{account}:user/keymgmt-test is not authorized to perform: kms:CreateKey on resource: * "
        "because no identity-based policy allows the kms:CreateKey action"
    )


def test_fault_lost_performs_the_action_but_never_answers(localstack: LocalStack, kms_proxy: AwsFaultProxy) -> None:
    account = fresh_account()
    kms = localstack.boto3_client(endpoint=kms_proxy.endpoint, access_key=account, retries=False)
    kms_proxy.add_fault("CreateKey", "lost")
    with pytest.raises(ConnectionClosedError):
        kms.create_key(Description="lost")
    keys = key_ids(localstack.boto3_client(access_key=account))
    assert len(keys) == 1  # it happened, though the client cannot know
    assert kms_proxy.calls("CreateKey") == [CallRecord("CreateKey", "us-east-1", 200, "lost")]


def test_fault_drop_closes_without_forwarding(localstack: LocalStack, kms_proxy: AwsFaultProxy) -> None:
    account = fresh_account()
    kms = localstack.boto3_client(endpoint=kms_proxy.endpoint, access_key=account, retries=False)
    kms_proxy.add_fault("CreateKey", "drop")
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        kms.create_key()
    assert key_ids(localstack.boto3_client(access_key=account)) == []
    assert kms_proxy.calls("CreateKey") == [CallRecord("CreateKey", "us-east-1", None, "drop")]


def test_fault_delay_then_forwards(localstack: LocalStack, kms_proxy: AwsFaultProxy) -> None:
    kms = localstack.boto3_client(endpoint=kms_proxy.endpoint, retries=False)
    kms_proxy.add_fault("ListKeys", "delay:0.4")
    started = time.monotonic()
    kms.list_keys(Limit=1)
    assert time.monotonic() - started >= 0.4
    started = time.monotonic()
    kms.list_keys(Limit=1)
    assert time.monotonic() - started < 0.4
    assert [c.fault for c in kms_proxy.calls("ListKeys")] == ["delay:0.4", None]


def test_fault_plan_times_skip_and_wildcard(localstack: LocalStack, kms_proxy: AwsFaultProxy) -> None:
    kms = localstack.boto3_client(endpoint=kms_proxy.endpoint, retries=False)
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    kms_proxy.add_fault("DescribeKey", "throttle", times=2, skip=1)

    def outcome() -> str:
        try:
            kms.describe_key(KeyId=key_id)
            return "ok"
        except ClientError as e:
            return e.response["Error"]["Code"]

    kms.list_keys(Limit=1)  # another action: neither faulted nor counted
    assert [outcome() for _ in range(4)] == ["ok", "ThrottlingException", "ThrottlingException", "ok"]
    assert kms_proxy.faults.pending() == []
    kms_proxy.add_fault("*", "500")
    assert error_of(kms.list_keys)[1] == "KMSInternalException"
    assert outcome() == "ok"
    assert kms_proxy.counts() == {"CreateKey": 1, "ListKeys": 2, "DescribeKey": 5}
    assert [c.status for c in kms_proxy.calls("DescribeKey")] == [200, 400, 400, 200, 200]
    # Records hold what tests need and nothing that could carry a secret.
    assert set(CallRecord.__dataclass_fields__) == {"action", "region", "status", "fault"}
    with pytest.raises(ValueError):
        kms_proxy.add_fault("ListKeys", "429")


def test_latency_applies_to_every_forwarded_call(localstack: LocalStack, kms_proxy: AwsFaultProxy) -> None:
    kms = localstack.boto3_client(endpoint=kms_proxy.endpoint, retries=False)
    kms_proxy.latency_s = 0.15
    started = time.monotonic()
    for _ in range(3):
        kms.list_keys(Limit=1)
    assert time.monotonic() - started >= 0.45
    kms_proxy.latency_s = 0.0


def test_proxy_listens_only_on_loopback_and_only_relays_to_loopback(kms_proxy: AwsFaultProxy) -> None:
    mine = [s for s in inet_sockets([os.getpid()]) if s.listening and s.local[1] == kms_proxy.port]
    assert [(s.proto, s.local[0]) for s in mine] == [("tcp", "127.0.0.1")]
    for upstream in ("http://10.0.0.1:4566", "http://localhost:4566", "https://127.0.0.1:4566", "http://127.0.0.1"):
        with pytest.raises(ValueError):
            AwsFaultProxy(upstream)


def test_kms_client_targets_only_the_given_endpoint(localstack: LocalStack) -> None:
    """Credentials, region and endpoint are explicit; no IMDS, no config files."""
    assert os.environ.get("AWS_EC2_METADATA_DISABLED") == "true"
    kms = kms_client(localstack.endpoint, "ap-south-1", retries=False)
    assert kms.meta.endpoint_url == localstack.endpoint
    assert kms.meta.region_name == "ap-south-1"
    credentials = kms._request_signer._credentials
    assert (credentials.access_key, credentials.method) == ("test", "explicit")
