"""`scripts/dev-server --demo`, started as a user starts it, runs the README's workflow end to end.

The demo runs as a subprocess on a free port (KEYMGMT_DEV_PORT) in a run
directory of the test's own (KEYMGMT_DEV_DIR), with `--no-build`:
scripts/test has just built the release binary. The test reads what the demo
printed, checks that its command block is the README's, exports what it
says and runs each step through bash and the `vault` CLI as pasted. After
each step it asks every cloud itself what it holds, never through the
plugin: Azure through the fake's REST API (Entra ID client credentials, then
Key Vault 7.6 calls, trusting only the fake's CA), AWS through boto3 against
LocalStack, and Cloud KMS through Google's official client; the public keys
there must be Vault's, and the fingerprints `vault read` shows must be
theirs. Then SIGINT, as Ctrl-C in the terminal sends it, must stop every
process the demo started and free every port, and no simulated secret may be
in anything the demo printed or logged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import harness
from harness import ROOT, free_port, record_output, register_private_key, register_secret, wait_for
from localstack import inet_sockets, kms_client

README = ROOT / "README.md"
DEV_SERVER = ROOT / "scripts" / "dev-server"
AZURE_API = {"api-version": "7.6"}
READY = "Ctrl-C stops the server and the clouds"


# -- the demo, as a user runs it ---------------------------------------------------------------


@dataclass
class Demo:
    proc: subprocess.Popen[bytes]
    port: int
    run_dir: Path
    stdout_path: Path
    stderr_path: Path
    exports: str  # the `export ...` lines it printed
    info: dict[str, Any]  # demo.json
    ready_seconds: float  # from the command to the "Ctrl-C stops" line

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def shell(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`script` pasted into a fresh shell in the checkout, after the printed exports."""
        result = subprocess.run(
            ["bash", "-c", f"{self.exports}\nset -euo pipefail\n{script}"],
            cwd=ROOT, env=user_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        )
        record_output(f"demo shell {script.splitlines()[0][:80]}", result.stdout, result.stderr)
        if check and result.returncode != 0:
            raise AssertionError(f"{script!r} exited {result.returncode}\nstdout: {result.stdout}\n"
                                 f"stderr: {result.stderr}\ndemo stderr:\n{self.stderr[-3000:]}")
        return result

    def read(self, path: str) -> dict[str, Any]:
        return json.loads(self.shell(f"vault read -format=json {path}").stdout)["data"]

    def fakes_state(self) -> dict[str, Any]:
        return json.loads(Path(self.info["state_file"]).read_text())


def user_env() -> dict[str, str]:
    """The test's environment without any Vault or keymgmt setting: what the demo prints must suffice."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "KEYMGMT_"))}


def descendants(pid: int) -> list[int]:
    """`pid` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:`port`, and a new server could bind it.

    SO_REUSEADDR, as every server here sets it: connections the clouds closed
    leave the port in TIME_WAIT for a minute, which is no process's."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def start_demo(tmp: Path, port: int, timeout: float = 60) -> Demo:
    env = {**user_env(), "KEYMGMT_DEV_PORT": str(port), "KEYMGMT_DEV_DIR": str(tmp / "dev"),
           # The most verbose plugin logging, so that the secret checks see everything.
           "KEYMGMT_LOG_LEVEL": "trace"}
    stdout_path, stderr_path = tmp / "demo.stdout", tmp / "demo.stderr"
    started = time.monotonic()
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen([str(DEV_SERVER), "--demo", "--no-build"], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                # Its own process group, as a terminal's foreground job has.
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    while READY not in stderr_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_demo(proc)
            raise AssertionError(f"the demo did not get ready (exit {proc.returncode}):\n"
                                 f"{stdout_path.read_text()}\n{stderr_path.read_text()}")
        time.sleep(0.1)
    stdout = stdout_path.read_text()
    exports = "\n".join(line for line in stdout.splitlines() if line.startswith("export "))
    demo_dir = re.search(r"^export KEYMGMT_DEMO=(\S+)$", stdout, re.MULTILINE)
    assert demo_dir, stdout
    info = json.loads((Path(demo_dir.group(1)) / "demo.json").read_text())
    return Demo(proc, port, tmp / "dev", stdout_path, stderr_path, exports, info, time.monotonic() - started)


def stop_demo(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """Ctrl-C: SIGINT to the demo's process group, as the terminal sends it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in descendants(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"the demo did not stop within {timeout} s of SIGINT") from None
    return proc.returncode


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    started = start_demo(tmp_path, free_port(span=2))
    # The secrets of this run, for the checks below and the session's final scan.
    directory = Path(started.info["azure"]["client_secret_file"]).parent
    register_secret((directory / "azure-client-secret").read_text(), site="the demo's Azure client secret")
    register_secret((directory / "aws-secret-key").read_text(), site="the demo's AWS secret key")
    account = json.loads((directory / "gcp-service-account.json").read_text())
    register_private_key(serialization.load_pem_private_key(account["private_key"].encode(), None),
                         site="the demo's GCP service account key")
    harness.SERVER_LOGS.append(started.run_dir / "server.log")
    try:
        yield started
    finally:
        if started.proc.poll() is None:
            stop_demo(started.proc)


# -- each cloud, asked directly ----------------------------------------------------------------


class AzureClient:
    """Key Vault's REST API on the fake, with a client-credentials token from its Entra ID."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.url = info["vault_url"]
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = info["ca_file"]
        with open(info["client_secret_file"]) as f:
            secret = f.read()
        token = self.session.post(f"{info['authority_url']}/{info['tenant_id']}/oauth2/v2.0/token", data={
            "grant_type": "client_credentials", "client_id": info["client_id"], "client_secret": secret,
            "scope": "https://vault.azure.net/.default"}, timeout=30)
        assert token.status_code == 200, token.text
        self.session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def get(self, path: str) -> requests.Response:
        return self.session.get(f"{self.url}{path}", params=AZURE_API, timeout=30)

    def versions(self, name: str) -> list[dict[str, Any]]:
        """Every version of the key, oldest first: enabled flag, tags and public key (None for a
        disabled version: Key Vault refuses to read one, with 403 KeyDisabled)."""
        listing = self.get(f"/keys/{name}/versions")
        assert listing.status_code == 200, listing.text
        body = listing.json()
        assert "nextLink" not in body, "more versions than one page"
        out = []
        for entry in body["value"]:
            version = entry["kid"].rsplit("/", 1)[1]
            got = self.get(f"/keys/{name}/{version}")
            if not entry["attributes"]["enabled"]:
                assert got.status_code == 403 and got.json()["error"]["innererror"]["code"] == "KeyDisabled", got.text
                out.append({"version": version, "kty": None, "enabled": False, "created": entry["attributes"]["created"],
                            "tags": entry.get("tags", {}), "spki": None})
                continue
            assert got.status_code == 200, got.text
            bundle = got.json()
            jwk = bundle["key"]
            n, e = (int.from_bytes(base64.urlsafe_b64decode(jwk[m] + "=="), "big") for m in ("n", "e"))
            out.append({"version": version, "kty": jwk["kty"], "enabled": bundle["attributes"]["enabled"],
                        "created": bundle["attributes"]["created"], "tags": bundle.get("tags", {}),
                        "spki": spki(rsa.RSAPublicNumbers(e, n).public_key())})
        return sorted(out, key=lambda v: (v["created"], int(v["tags"]["vault_version"])))


class GcpClient:
    """Google's official Cloud KMS client (REST) on the fake, with the demo's service account."""

    def __init__(self, info: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        from google.api_core.client_options import ClientOptions
        from google.cloud import kms_v1
        from google.oauth2 import service_account

        monkeypatch.setenv("REQUESTS_CA_BUNDLE", info["ca_file"])
        credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
            info["service_account_file"])
        self.client = kms_v1.KeyManagementServiceClient(
            credentials=credentials, transport="rest", client_options=ClientOptions(api_endpoint=info["kms_url"]))
        self.ring = info["key_ring"]

    def crypto_keys(self) -> list[str]:
        return sorted(k.name for k in self.client.list_crypto_keys(parent=self.ring))

    def versions(self, name: str) -> dict[str, dict[str, Any]]:
        """Version id -> state name, and the public key while it has one."""
        key = f"{self.ring}/cryptoKeys/{name}"
        out = {}
        for version in self.client.list_crypto_key_versions(parent=key):
            entry: dict[str, Any] = {"state": version.state.name, "algorithm": version.algorithm.name}
            if version.state.name == "ENABLED":  # Cloud KMS shows no public key of a disabled version
                pem = self.client.get_public_key(name=version.name).pem
                entry["spki"] = spki(serialization.load_pem_public_key(pem.encode()))
            out[version.name.rsplit("/", 1)[1]] = entry
        return out


def spki(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def vault_spki(pem: str) -> bytes:
    return spki(serialization.load_pem_public_key(pem.encode()))


def fingerprint(der: bytes) -> str:
    return "sha256:" + hashlib.sha256(der).hexdigest()


# -- the README's block ------------------------------------------------------------------------


def readme_commands() -> str:
    """The ```sh block of "Try it without a cloud account" that starts with "# 1."."""
    text = README.read_text()
    # Up to the next level-2 heading (the block's own `# N.` lines are shell comments).
    section = re.search(r"^## Try it without a cloud account\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert section, "README.md has no section 'Try it without a cloud account'"
    blocks = re.findall(r"^```sh\n(.*?)^```", section.group(1), re.MULTILINE | re.DOTALL)
    workflow = [b for b in blocks if b.startswith("# 1.")]
    assert len(workflow) == 1, blocks
    return workflow[0]


def printed_commands(stdout: str) -> str:
    """From the printed "# 1." line to the first empty line after it."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# 1."))
    end = lines.index("", start)
    return "\n".join(lines[start:end]) + "\n"


def steps(block: str) -> list[tuple[str, str]]:
    """(title, commands) per `# N. title` comment."""
    found = re.findall(r"^# (\d+\. [^\n]*)\n(.*?)(?=^# \d+\. |\Z)", block, re.MULTILINE | re.DOTALL)
    return [(title, body) for title, body in found]


# -- the test ----------------------------------------------------------------------------------


def test_demo_runs_the_readme_workflow_on_every_cloud_and_stops_cleanly(
    demo: Demo, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    out = demo.stdout
    # The documented port setting took effect, and the banner says what is real and what is not.
    assert f"export VAULT_ADDR=http://127.0.0.1:{demo.port} VAULT_TOKEN=root" in out
    assert not port_free(demo.port)
    bao_version = subprocess.run([str(harness.VENV_BIN / "bao"), "version"], capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    real = out[out.index("Real:"):out.index("Simulated")]
    simulated = out[out.index("Simulated"):out.index("In another terminal")]
    assert f"OpenBao {bao_version} server" in real
    assert f"keymgmt plugin {harness.plugin_version()}: {harness.PLUGIN_BINARY}" in real
    assert f"LocalStack 2026.3.0's KMS emulation, at {demo.info['aws']['endpoint']}" in real
    assert "wraps and imports" in real
    assert f"Azure Key Vault and Entra ID, at {demo.info['azure']['vault_url']}" in simulated
    assert f"Google Cloud KMS and its OAuth endpoint, at {demo.info['gcp']['kms_url']}" in simulated
    assert "official API specifications" in simulated
    # What it prints to paste is exactly what the README documents.
    block = printed_commands(out)
    assert block == readme_commands()
    titles = [title for title, _ in steps(block)]
    assert [t.split(".")[0] for t in titles] == ["1", "2", "3", "4", "5"], titles
    run = dict(steps(block))

    azure = AzureClient(demo.info["azure"])
    aws = kms_client(demo.info["aws"]["endpoint"], demo.info["aws"]["region"],
                     access_key=demo.info["aws"]["access_key"],
                     secret_key=Path(demo.info["aws"]["secret_key_file"]).read_text())
    gcp = GcpClient(demo.info["gcp"], monkeypatch)
    # Every cloud starts empty.
    assert demo.fakes_state()["azure"]["keys"] == {}
    assert aws.list_keys()["Keys"] == []
    assert gcp.crypto_keys() == []

    # 1. A key and three providers.
    demo.shell(run[titles[0]])
    providers = json.loads(demo.shell("vault list -format=json keymgmt/kms").stdout)
    assert providers == ["aws-demo", "azure-demo", "gcp-demo"]
    assert demo.fakes_state()["azure"]["keys"] == {} and aws.list_keys()["Keys"] == [] and gcp.crypto_keys() == []

    def check(enabled: dict[int, bool]) -> dict[str, dict[str, Any]]:
        """Each cloud holds one copy of each Vault version, with Vault's public key and `enabled`."""
        key = demo.read("keymgmt/key/example-key")
        publics = {int(v): vault_spki(body["public_key"]) for v, body in key["versions"].items()}
        # Reads hide versions below min_enabled_version; the clouds still hold them.
        assert sorted(publics) == [v for v in sorted(enabled) if v >= key["min_enabled_version"]]
        for v, der in publics.items():
            assert key["versions"][str(v)]["fingerprint"] == fingerprint(der)
        records = {kms: demo.read(f"keymgmt/kms/{kms}-demo/key/example-key") for kms in ("azure", "aws", "gcp")}
        for record in records.values():
            assert sorted(int(v) for v in record["versions"]) == sorted(enabled)

        held = azure.versions(records["azure"]["name"])
        assert [v["version"] for v in held] == [records["azure"]["versions"][str(v)] for v in sorted(enabled)]
        for v, copy in zip(sorted(enabled), held):
            assert copy["kty"] == ("RSA-HSM" if enabled[v] else None) and copy["tags"] == {"vault_version": str(v)}
            assert copy["enabled"] is enabled[v], (v, copy)
            if v in publics:
                assert copy["spki"] == publics[v]
        state = demo.fakes_state()
        # The plugin deletes its BYOK exchange keys; only the distributed key is live.
        live = [n for n, k in state["azure"]["keys"].items() if not k["deleted"]]
        assert live == [records["azure"]["name"]]
        stored = state["azure"]["keys"][live[0]]["versions"]
        assert len(stored) == len(held)
        assert [f["fingerprint"] for f, c in zip(stored, held) if c["enabled"]] == [
            fingerprint(c["spki"]) for c in held if c["enabled"]]

        account_keys = {k["KeyId"] for k in aws.list_keys()["Keys"]}
        assert account_keys == set(records["aws"]["versions"].values()), "one KMS key per Vault version"
        for v in sorted(enabled):
            meta = aws.describe_key(KeyId=records["aws"]["versions"][str(v)])["KeyMetadata"]
            assert (meta["Origin"], meta["KeySpec"], meta["KeyUsage"]) == ("EXTERNAL", "RSA_2048", "ENCRYPT_DECRYPT")
            assert meta["KeyState"] == ("Enabled" if enabled[v] else "Disabled"), (v, meta["KeyState"])
            if v in publics:
                assert aws.get_public_key(KeyId=meta["KeyId"])["PublicKey"] == publics[v]
        alias = f"alias/hashicorp/{records['aws']['name']}"
        targets = {a["AliasName"]: a.get("TargetKeyId") for a in aws.list_aliases()["Aliases"]}
        assert targets.get(alias) == records["aws"]["versions"][str(max(enabled))], targets

        assert gcp.crypto_keys() == [f"{gcp.ring}/cryptoKeys/{records['gcp']['name']}"]
        versions = gcp.versions(records["gcp"]["name"])
        assert sorted(versions) == sorted(records["gcp"]["versions"][str(v)] for v in enabled)
        for v in sorted(enabled):
            copy = versions[records["gcp"]["versions"][str(v)]]
            assert copy["algorithm"] == "RSA_DECRYPT_OAEP_2048_SHA256"
            assert copy["state"] == ("ENABLED" if enabled[v] else "DISABLED"), (v, copy["state"])
            if v in publics:
                assert copy["spki"] == publics[v]
        for cloud in ("azure", "gcp"):
            assert state[cloud]["validation_failures"] == [], state[cloud]["validation_failures"]
        return records

    # 2. Distribute to all three: version 1 in each.
    demo.shell(run[titles[1]])
    records = check({1: True})
    # --show, as the banner tells a user to run it, shows the same copies.
    shown = json.loads(demo.shell("scripts/dev-server --show --json").stdout)
    assert [k["key_id"] for k in shown["aws"]["keys"]] == [records["aws"]["versions"]["1"]]
    text = demo.shell("scripts/dev-server --show").stdout
    for record in records.values():
        assert record["name"] in text
    assert demo.read("keymgmt/key/example-key")["versions"]["1"]["fingerprint"] in text

    # 3. Rotate: version 2 everywhere, and current where a cloud has a current version.
    demo.shell(run[titles[2]])
    check({1: True, 2: True})

    # 4. min_enabled_version=2: version 1 disabled everywhere.
    demo.shell(run[titles[3]])
    records = check({1: False, 2: True})

    # 5. Removal: soft-deleted in Azure, pending deletion in AWS, destroyed in Cloud KMS.
    demo.shell(run[titles[4]])
    name = records["azure"]["name"]
    gone = azure.get(f"/keys/{name}/versions")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "KeyNotFound", gone.text
    deleted = azure.get(f"/deletedkeys/{name}")
    assert deleted.status_code == 200, deleted.text
    for key_id in records["aws"]["versions"].values():
        assert aws.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    assert not [a for a in aws.list_aliases()["Aliases"] if a["AliasName"].startswith("alias/hashicorp/")]
    gcp_versions = gcp.versions(records["gcp"]["name"])
    assert {v["state"] for v in gcp_versions.values()} == {"DESTROY_SCHEDULED"}, gcp_versions
    assert json.loads(demo.shell("vault list -format=json keymgmt/key").stdout) == ["example-key"]
    state = demo.fakes_state()
    assert state["azure"]["validation_failures"] == [] and state["gcp"]["validation_failures"] == []
    workflow_seconds = time.monotonic() - started

    # Everything the demo runs stays on 127.0.0.1.
    processes = descendants(demo.proc.pid)
    plugin_dir = demo.run_dir / "plugins"
    names = {Path(f"/proc/{p}/exe").resolve().name for p in processes if alive(p)}
    assert {"bao", harness.PLUGIN_NAME} <= names, names
    assert any("localstack" in Path(f"/proc/{p}/cmdline").read_text(errors="replace") for p in processes)
    for s in inet_sockets(processes):
        assert s.local[0] in ("127.0.0.1", "::ffff:127.0.0.1"), s
        if not s.listening:
            assert s.remote[0] in ("127.0.0.1", "::ffff:127.0.0.1"), s
    ports = [demo.port, demo.port + 1, int(demo.info["aws"]["endpoint"].rsplit(":", 1)[1])] + [
        int(url.rsplit(":", 1)[1]) for url in (demo.info["azure"]["vault_url"], demo.info["azure"]["authority_url"],
                                                demo.info["gcp"]["kms_url"], demo.info["gcp"]["token_uri"].split("/")[2])]
    assert not [p for p in ports if port_free(p)], "a cloud or the server is not listening"

    # Ctrl-C stops it all: exit 0, no process left, every port free, the secrets deleted.
    assert stop_demo(demo.proc) == 0, demo.stderr
    assert wait_for(lambda: not [p for p in processes if alive(p)], timeout=10), [p for p in processes if alive(p)]
    assert not harness.plugin_pids(SimpleNamespace(plugin_dir=plugin_dir))  # type: ignore[arg-type]
    assert wait_for(lambda: all(port_free(p) for p in ports), timeout=5), [p for p in ports if not port_free(p)]
    assert "dev-server: stopped" in demo.stderr
    directory = Path(demo.info["state_file"]).parent
    assert not [f for f in ("azure-client-secret", "aws-secret-key", "gcp-service-account.json")
                if (directory / f).exists()]

    # No simulated secret in anything the demo printed or wrote, the server log included.
    written = [demo.stdout_path, demo.stderr_path, demo.run_dir / "server.log", *directory.rglob("*.log"),
               directory / "fakes-state.json", directory / "demo.json"]
    leaks = harness.find_leaks(written, None)
    assert not leaks, leaks
    # The scan had the plugin's own trace logging to search.
    assert harness.PLUGIN_NAME in (demo.run_dir / "server.log").read_text()
    print(f"demo ready in {demo.ready_seconds:.1f} s, workflow and checks {workflow_seconds:.1f} s, "
          f"stop and checks {time.monotonic() - started - workflow_seconds:.1f} s")


def test_demo_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    """KEYMGMT_DEV_PORT taken: the demo refuses before starting anything, and says which setting to change."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**user_env(), "KEYMGMT_DEV_PORT": str(port), "KEYMGMT_DEV_DIR": str(tmp_path / "dev")}
        result = subprocess.run([str(DEV_SERVER), "--demo", "--no-build"], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result
    assert f"127.0.0.1:{port} is in use" in result.stderr and "KEYMGMT_DEV_PORT" in result.stderr, result.stderr
    assert "starting the demo clouds" not in result.stderr
    assert result.stdout == ""


def test_demo_ctrl_c_while_starting_leaves_nothing(tmp_path: Path) -> None:
    """Ctrl-C while LocalStack is still starting: the demo stops what it started, and exits 0."""
    port = free_port(span=2)
    env = {**user_env(), "KEYMGMT_DEV_PORT": str(port), "KEYMGMT_DEV_DIR": str(tmp_path / "dev")}
    with open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen([str(DEV_SERVER), "--demo", "--no-build"], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
    try:
        def localstack_starting() -> list[int]:
            # Only once the set-up scripts are done (the line below comes from dev_server.py):
            # a SIGINT there is theirs to handle, and interrupting a venv check is not this test's subject.
            if "starting the demo clouds" not in (tmp_path / "stderr").read_text():
                return []
            pids = descendants(proc.pid)
            return [p for p in pids
                    if "localstack.runtime.main" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")]

        assert wait_for(localstack_starting, timeout=30), (tmp_path / "stderr").read_text()
        processes = descendants(proc.pid)
        # Still starting: nothing printed to paste, the server not yet up.
        assert READY not in (tmp_path / "stderr").read_text()
        assert stop_demo(proc, timeout=20) == 0, (tmp_path / "stderr").read_text()
    finally:
        if proc.poll() is None:
            stop_demo(proc)
    assert wait_for(lambda: not [p for p in processes if alive(p)], timeout=10), [p for p in processes if alive(p)]
    assert port_free(port) and port_free(port + 1)
    stderr = (tmp_path / "stderr").read_text()
    assert "dev-server: stopped" in stderr and "Traceback" not in stderr, stderr
    demo_dir = tmp_path / "dev" / "demo"
    assert demo_dir.is_dir()
    assert not [f for f in ("azure-client-secret", "aws-secret-key", "gcp-service-account.json")
                if (demo_dir / f).exists()]
