"""Errors read the same for every status: a 404, a 405 and a 502 print as cleanly
in the CLI and over HTTP as a 400 does (`* <message>`), never wrapped in the
host's "1 error occurred:" list."""

from __future__ import annotations

import socket

from collections.abc import Iterator

import pytest

from harness import MOUNT, BaoServer, cli, http, install_plugin, kill_plugins

WRAPPED = "1 error occurred"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoServer]:
    """Fast AWS retries, so that the unreachable provider gives up at once."""
    srv = BaoServer(tmp_path_factory.mktemp("errors"), env={"KEYMGMT_AWS_RETRY_BASE_MS": "5"})
    try:
        install_plugin(srv)
        yield srv
    finally:
        srv.stop()
        kill_plugins(srv)


def test_not_found_unsupported_and_bad_gateway_are_clean(server: BaoServer, name: str) -> None:
    # 404: a missing key, a missing provider, a path that does not exist.
    out = cli(server, "write", "-f", f"{MOUNT}/key/{name}/rotate", check=False)
    assert "Code: 404" in out.stderr and f'* key "{name}" not found\n' in out.stderr, out.stderr
    resp = http(server, "POST", f"{MOUNT}/kms/{name}/key/{name}", json={"purpose": "sign"})
    assert resp.status_code == 404 and resp.json() == {"errors": [f'KMS provider "{name}" not found']}
    resp = http(server, "GET", f"{MOUNT}/no/such/path")
    assert resp.status_code == 404 and resp.json() == {"errors": ["unsupported path"]}
    # 405: an operation the path does not have.
    out = cli(server, "delete", f"{MOUNT}/key", check=False)
    assert "Code: 405" in out.stderr and "* unsupported operation\n" in out.stderr, out.stderr
    # 502: a provider that cannot be reached.
    cli(server, "write", f"{MOUNT}/key/{name}", "type=aes256-gcm96")
    cli(server, "write", f"{MOUNT}/kms/{name}", "provider=awskms", "key_collection=us-east-1",
        "credentials=access_key=AKIAEXAMPLE", "credentials=secret_key=not-a-real-secret",
        f"credentials=endpoint=http://127.0.0.1:{closed_port()}")
    resp = http(server, "POST", f"{MOUNT}/kms/{name}/key/{name}", json={"purpose": "encrypt,decrypt"})
    assert resp.status_code == 502, resp.text
    [message] = resp.json()["errors"]
    assert message.startswith(f'distributing key "{name}" to KMS provider "{name}"'), message
    for text in (out.stderr, resp.text):
        assert WRAPPED not in text, text
