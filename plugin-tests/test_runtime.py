"""Black-box tests of the keymgmt plugin runtime under a real OpenBao server."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import hvac

from harness import (
    HANDSHAKE_RE,
    MOUNT,
    PLUGIN_NAME,
    BaoServer,
    cli,
    host_plugin_env,
    http,
    kill_plugins,
    plugin_pids,
    read_handshake,
    read_key,
    require_plugin_binary,
    spawn_plugin,
    stop_process,
    wait_for,
)

FreshServer = Callable[[], BaoServer]


def create_key(server: BaoServer, name: str, key_type: str = "rsa-2048", mount: str = MOUNT) -> None:
    cli(server, "write", "-f", f"{mount}/key/{name}", f"type={key_type}")




def single_plugin_pid(server: BaoServer) -> int:
    def exactly_one() -> list[int]:
        pids = plugin_pids(server)
        return pids if len(pids) == 1 else []

    # A registration probe may still be exiting; give it a moment.
    pids = wait_for(exactly_one, timeout=5)
    assert pids, f"expected exactly one plugin process, found {plugin_pids(server)}"
    return pids[0]


def test_create_read_list(server: BaoServer, name: str) -> None:
    create_key(server, name)

    data = read_key(server, name)
    assert data["name"] == name
    assert data["type"] == "rsa-2048"
    assert data["latest_version"] == 1

    listed = json.loads(cli(server, "list", "-format=json", f"{MOUNT}/key").stdout)
    assert name in listed


def test_two_mounts_are_separate_but_share_one_process(fresh_server: FreshServer) -> None:
    srv = fresh_server()
    cli(srv, "secrets", "enable", "-path=keymgmt2", MOUNT)

    create_key(srv, "same", "rsa-2048", mount=MOUNT)
    create_key(srv, "same", "ecdsa-p256", mount="keymgmt2")

    assert read_key(srv, "same", mount=MOUNT)["type"] == "rsa-2048"
    assert read_key(srv, "same", mount="keymgmt2")["type"] == "ecdsa-p256"
    single_plugin_pid(srv)  # the plugin multiplexes both mounts


def test_sigkill_plugin_is_transparent(fresh_server: FreshServer) -> None:
    srv = fresh_server()
    create_key(srv, "survivor")
    before = read_key(srv, "survivor")
    pid = single_plugin_pid(srv)

    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: pid not in plugin_pids(srv), timeout=5)

    assert read_key(srv, "survivor") == before
    assert single_plugin_pid(srv) != pid


def test_plugin_reload_keeps_data(fresh_server: FreshServer) -> None:
    srv = fresh_server()
    create_key(srv, "reloaded")
    before = read_key(srv, "reloaded")
    pid = single_plugin_pid(srv)

    cli(srv, "plugin", "reload", f"-plugin={MOUNT}")

    assert read_key(srv, "reloaded") == before
    assert wait_for(lambda: pid not in plugin_pids(srv), timeout=10), "old process did not exit"


def test_seal_unseal_keeps_data(fresh_server: FreshServer) -> None:
    srv = fresh_server()
    create_key(srv, "sealed")
    before = read_key(srv, "sealed")

    cli(srv, "operator", "seal")
    # Sealing sends Cleanup + Shutdown; the plugin must then exit.
    assert wait_for(lambda: not plugin_pids(srv), timeout=10), "plugin still running while sealed"
    cli(srv, "operator", "unseal", srv.unseal_key())

    assert read_key(srv, "sealed") == before


def test_path_help(server: BaoServer, name: str) -> None:
    create_key(server, name)
    text = cli(server, "path-help", f"{MOUNT}/key/{name}").stdout
    assert text.strip()
    assert "key" in text.lower()


def test_openapi_includes_key_paths(server: BaoServer) -> None:
    resp = http(server, "GET", "sys/internal/specs/openapi")
    assert resp.status_code == 200, resp.text
    paths = resp.json()["paths"]
    assert any(p.startswith(f"/{MOUNT}/key/") for p in paths), sorted(paths)


def test_binary_run_by_hand_refuses() -> None:
    result = subprocess.run(
        [str(require_plugin_binary())],
        env={},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 1
    assert "plugin" in result.stderr.lower()
    assert result.stdout == ""


def test_server_sigterm_leaves_no_plugin(fresh_server: FreshServer) -> None:
    srv = fresh_server()
    create_key(srv, "k")
    assert plugin_pids(srv)

    srv.stop()
    try:
        # The host does not kill plugins on SIGTERM; they must notice the lost connection.
        left = wait_for(lambda: not plugin_pids(srv), timeout=10)
        assert left, f"plugin processes outlived the server: {plugin_pids(srv)}"
    finally:
        kill_plugins(srv)


def test_handshake_line_and_socket_cleanup(tmp_path: Path) -> None:
    proc = spawn_plugin(host_plugin_env(tmp_path))
    try:
        line = read_handshake(proc, timeout=10)
        match = HANDSHAKE_RE.fullmatch(line)
        assert match, f"bad handshake line: {line!r}"
        sock = Path(match.group(1))
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert sock.parent == tmp_path, "socket not in TMPDIR, where go-plugin puts it"
    finally:
        stop_process(proc)
    stdout, stderr = proc.communicate()
    assert proc.returncode is not None
    assert stdout == b"", f"stdout after handshake: {stdout!r}; stderr: {stderr!r}"
    assert not sock.exists(), "plugin left its socket behind"


def test_bad_input_is_rejected_and_plugin_keeps_serving(
    server: BaoServer, client: hvac.Client, name: str
) -> None:
    bad_type = cli(server, "write", f"{MOUNT}/key/{name}-bad", "type=nope", check=False)
    assert bad_type.returncode != 0
    assert "unsupported key type" in bad_type.stderr + bad_type.stdout

    create_key(server, name)
    bad_version = cli(server, "write", f"{MOUNT}/key/{name}", "min_enabled_version=abc", check=False)
    assert bad_version.returncode != 0
    assert "Code: 400" in bad_version.stderr, bad_version.stderr
    assert "min_enabled_version" in bad_version.stderr

    resp = http(server, "POST", f"{MOUNT}/key/{name}-huge", json={"type": "x" * (1 << 20)})
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:500])

    resp = http(server, "GET", f"{MOUNT}/nope")
    assert resp.status_code in (404, 405), resp.text

    assert client.read(f"{MOUNT}/key/{name}")["data"]["name"] == name


def test_plugin_stderr_reaches_server_log(server: BaoServer) -> None:
    # go-plugin names the plugin's logger after its command and re-levels its lines.
    line = re.compile(r"\[INFO\]\s+\S+\." + re.escape(PLUGIN_NAME) + r": \S")
    assert wait_for(lambda: line.search(server.log_text()), timeout=5), (
        f"no [INFO] line from the plugin's logger in {server.log_path}"
    )


def test_system_view_is_reachable_from_initialize(server: BaoServer) -> None:
    # Initialize asks the host's brokered SystemView for the server version
    # and logs it, so this line proves the brokered connection works.
    line = re.compile(
        re.escape(PLUGIN_NAME) + r": keymgmt mount initialized:.*server_version=2\.7\.2"
    )
    assert wait_for(lambda: line.search(server.log_text()), timeout=5), (
        f"no 'keymgmt mount initialized' line with the server version in {server.log_path}"
    )
