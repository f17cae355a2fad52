"""The whole-suite secret scan can fail (issue 11 item 4).

conftest.py's `pytest_sessionfinish` searches every server log and every
answer the harness saw for every secret registered with
`harness.register_secret`/`register_material`, and fails the run on a hit.
These tests run the scanner directly on values of their own (a private
registry, so the real session never fails because of them), and once through
a child pytest session to show that a leak fails a run without printing the
secret.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import harness

HERE = Path(__file__).resolve().parent


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_registered_secret_in_a_log_or_an_answer_is_found(tmp_path: Path) -> None:
    registry: dict[str, str] = {}
    value = harness.register_secret(f"S3CR3T-{uuid.uuid4().hex}", registry=registry)
    clean = harness.register_secret(f"S3CR3T-{uuid.uuid4().hex}", registry=registry)
    site = registry[value]
    assert site.startswith("plugin-tests/test_secret_scan.py:") and "(test_a_registered" in site, site

    log = tmp_path / "bao.log"  # not server.log: the real session scans those
    log.write_text(f'2026-01-01T00:00:00Z [DEBUG] secrets.keymgmt: request: body="x{value}y"\n')
    transcript = tmp_path / "answers.transcript"
    harness.record_output("http GET keymgmt/kms/a -> 200", '{"data":{}}', transcript=transcript)
    harness.record_output("cli write keymgmt/kms/b", "", f"Error: * credentials: {value}", transcript=transcript)
    other_log = tmp_path / "other.log"
    other_log.write_text("nothing here\n")

    leaks = harness.find_leaks([log, other_log], transcript, registry)
    assert sorted(leaks) == sorted([
        (str(log.resolve()), site),
        (f"{transcript}: the answer to cli write keymgmt/kms/b", site),
    ])
    # The report names where, never what.
    assert value not in repr(leaks) and clean not in repr(leaks)
    # Recorded after the fact: registering later still catches what was seen before.
    late = f"late-{uuid.uuid4().hex}"
    harness.record_output("http GET keymgmt/key/c -> 200", late, transcript=transcript)
    assert harness.find_leaks([], transcript, registry) == [(f"{transcript}: the answer to cli write keymgmt/kms/b", site)]
    harness.register_secret(late, site="registered late", registry=registry)
    assert (f"{transcript}: the answer to http GET keymgmt/key/c -> 200", "registered late") in harness.find_leaks(
        [], transcript, registry)


def test_short_values_cannot_be_registered() -> None:
    with pytest.raises(ValueError, match="would match by chance"):
        harness.register_secret("test", registry={})


@pytest.mark.parametrize("kind", ["aes", "rsa", "ec"])
def test_key_material_is_found_in_any_encoding_and_public_parts_are_not(tmp_path: Path, kind: str) -> None:
    registry: dict[str, str] = {}
    public_pem = ""
    if kind == "aes":
        material = os.urandom(32)
        secret_parts = [material]
    else:
        key = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
        material = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        if isinstance(key, rsa.RSAPrivateKey):
            numbers = key.private_numbers()
            secret_parts = [harness._uint(numbers.d), harness._uint(numbers.p)]  # noqa: SLF001
        else:
            secret_parts = [harness._uint(key.private_numbers().private_value, 32)]  # noqa: SLF001
    harness.register_material(material, site="the test's key", registry=registry)
    assert len(registry) >= 4

    def found(text: str) -> bool:
        log = tmp_path / "probe.log"
        log.write_text(text)
        return bool(harness.find_leaks([log], None, registry))

    # Whatever the alignment of the material inside a larger encoded blob.
    for prefix in (b"", b"\x01", b"\x01\x02"):
        blob = prefix + material + b"trailer"
        assert found("wrapped=" + base64.b64encode(blob).decode()), prefix
        assert found("jwk=" + b64url(blob)), prefix
    assert found("dump " + material.hex())
    for part in secret_parts:
        assert found('{"d":"' + b64url(part) + '"}'), "a JWK member"
    if kind != "aes":
        pem = serialization.load_der_private_key(material, None).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
        assert found(pem)
        # No false alarm on what is public: a read shows the public key.
        assert not found(json.dumps({"public_key": public_pem}) + public_pem)


LEAKING_TEST = '''
import harness

def test_leaks_a_secret():
    value = harness.register_secret("LEAKED-{marker}")
    harness.record_output("http GET keymgmt/key/leaky -> 200", "...LEAKED-{marker}...")
'''


def test_a_leak_fails_the_whole_session(tmp_path: Path) -> None:
    """A child pytest session with this directory's conftest.py as a plugin: one
    passing test that registers a secret and gets it back in an answer. The run
    must fail, say where and which registration, and never print the secret."""
    marker = uuid.uuid4().hex
    module = tmp_path / "test_leaky.py"
    module.write_text(LEAKING_TEST.format(marker=marker))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
         f"--rootdir={tmp_path}", f"--basetemp={tmp_path / 'child'}", str(module)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert "1 passed" in output, output
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, output
    assert "1 LEAKS" in output, output
    assert (f"the answer to http GET keymgmt/key/leaky -> 200: holds a secret registered at {module}:"
            in output), output
    assert marker not in output, "the secret itself is never printed"
