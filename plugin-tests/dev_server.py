"""A foreground OpenBao dev server with keymgmt/ mounted, for trying commands by hand.

`--demo` also runs a cloud for each provider on 127.0.0.1, so that the
README's workflow runs end to end without a cloud account: LocalStack's AWS
KMS (a real emulator), and the project's Azure Key Vault and Cloud KMS fakes
(plugin-tests/fakes/), which check every request against the official specs.
The plugin reaches them through the server's environment, with the settings
the README documents for private clouds; the commands a user types are the
ones they would type against the real clouds.

Settings (environment):
  KEYMGMT_DEV_PORT  the server's port on 127.0.0.1 (default 8200; the dev
                    server also binds port+1 for its cluster listener)
  KEYMGMT_DEV_DIR   the run directory (default .tmp/dev in the checkout): the
                    server log, the plugin directory, and in demo mode
                    `demo/` with the fakes' request log and state

`--show` prints what each cloud of a running demo holds (KEYMGMT_DEMO, or
the default run directory, says which demo).
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from harness import (
    PLUGIN_BINARY,
    PLUGIN_NAME,
    ROOT,
    VENV_BIN,
    BaoServer,
    _port_free,
    install_plugin,
    kill_plugins,
    plugin_pids,
    plugin_version,
    wait_for,
)

DEFAULT_PORT = 8200
DEFAULT_DIR = ROOT / ".tmp" / "dev"
# A run directory holds this file; only such a directory (or an empty one) is wiped on start.
MARKER = ".keymgmt-dev-server"

# -- the demo's simulated identities -------------------------------------------------------
#
# Ids are fixed, so the README's commands are exact; secrets are random per run
# and live only in files in the demo directory (0600), which the commands read
# with $(cat ...): nothing secret is printed or logged.
AZURE_TENANT_ID = "6b5f1c2e-0d3a-4e8b-9a71-2c4d5e6f7a80"
AZURE_CLIENT_ID = "0c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f"
AZURE_KEY_COLLECTION = "demo-vault"
GCP_PROJECT = "keymgmt-demo"
GCP_KEY_RING = f"projects/{GCP_PROJECT}/locations/global/keyRings/demo"
# LocalStack takes the account from an access key id that starts with 12 digits.
AWS_ACCESS_KEY = "123456789012"
AWS_REGION = "us-east-1"

AZURE_SECRET_FILE = "azure-client-secret"
AWS_SECRET_FILE = "aws-secret-key"
GCP_ACCOUNT_FILE = "gcp-service-account.json"
SECRET_FILES = (AZURE_SECRET_FILE, AWS_SECRET_FILE, GCP_ACCOUNT_FILE)
INFO_FILE = "demo.json"  # where everything is (no secrets)
STATE_FILE = "fakes-state.json"  # what the Azure and GCP fakes hold, rewritten after every request
REQUEST_LOG = "requests.log"  # one JSON line per request the fakes served (no headers, no bodies)

# The README's workflow against the demo; README.md ("Try it without a cloud
# account") shows exactly this block, and plugin-tests/test_demo.py runs it.
DEMO_COMMANDS = """\
# 1. A key, and one provider per cloud
vault write -f keymgmt/key/example-key type="rsa-2048"
vault write keymgmt/kms/azure-demo \\
    provider="azurekeyvault" \\
    key_collection="demo-vault" \\
    credentials=tenant_id="6b5f1c2e-0d3a-4e8b-9a71-2c4d5e6f7a80" \\
    credentials=client_id="0c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f" \\
    credentials=client_secret="$(cat "$KEYMGMT_DEMO/azure-client-secret")"
vault write keymgmt/kms/aws-demo \\
    provider="awskms" \\
    key_collection="us-east-1" \\
    credentials=access_key="123456789012" \\
    credentials=secret_key="$(cat "$KEYMGMT_DEMO/aws-secret-key")"
vault write keymgmt/kms/gcp-demo \\
    provider="gcpckms" \\
    key_collection="projects/keymgmt-demo/locations/global/keyRings/demo" \\
    credentials=service_account_file="$KEYMGMT_DEMO/gcp-service-account.json"
# 2. Distribute it to all three
vault write keymgmt/kms/azure-demo/key/example-key purpose="encrypt,decrypt" protection="hsm"
vault write keymgmt/kms/aws-demo/key/example-key purpose="encrypt,decrypt"
vault write keymgmt/kms/gcp-demo/key/example-key purpose="decrypt" protection="hsm"
vault read keymgmt/kms/azure-demo/key/example-key
vault read keymgmt/key/example-key
# 3. Rotate: version 2 reaches every provider
vault write -f keymgmt/key/example-key/rotate
# 4. Disable version 1 everywhere
vault write keymgmt/key/example-key min_enabled_version=2
# 5. Remove the key from each provider (it stays in Vault)
vault delete keymgmt/kms/azure-demo/key/example-key
vault delete keymgmt/kms/aws-demo/key/example-key
vault delete keymgmt/kms/gcp-demo/key/example-key
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/dev-server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="store_true", help="also run the clouds (fakes and LocalStack)")
    parser.add_argument("--no-build", action="store_true",
                        help="use the existing target/release binary (scripts/dev-server skips cargo build)")
    parser.add_argument("--show", action="store_true", help="print what a running demo's clouds hold")
    parser.add_argument("--json", action="store_true", help="with --show: as JSON")
    args = parser.parse_args(argv)
    if args.show:
        return show(as_json=args.json)
    return serve(demo=args.demo)


def _settings() -> tuple[int, Path]:
    raw = os.environ.get("KEYMGMT_DEV_PORT", str(DEFAULT_PORT))
    if not raw.isdigit() or not 1 <= int(raw) <= 65534:
        raise SystemExit(f"dev-server: KEYMGMT_DEV_PORT={raw!r} is not a port (1-65534)")
    directory = Path(os.environ.get("KEYMGMT_DEV_DIR") or DEFAULT_DIR).resolve()
    return int(raw), directory


def _fresh_directory(directory: Path) -> None:
    """Empty the run directory; refuse one this script did not make (the default one always is)."""
    if directory.exists():
        ours = directory == DEFAULT_DIR.resolve() or (directory / MARKER).is_file()
        if not directory.is_dir() or (any(directory.iterdir()) and not ours):
            raise SystemExit(f"dev-server: {directory} is not a dev-server run directory; "
                             "set KEYMGMT_DEV_DIR to a new or empty one")
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / MARKER).touch()


def serve(demo: bool) -> int:
    port, tmp = _settings()
    tmp.parent.mkdir(parents=True, exist_ok=True)
    # One dev server per run directory: a second would wipe the first one's plugin dir.
    lock = open(tmp.parent / f"{tmp.name}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"dev-server: another dev server is using {tmp}", file=sys.stderr)
        return 1
    if not PLUGIN_BINARY.is_file():
        print(f"dev-server: {PLUGIN_BINARY} is missing; run `cargo build --release`", file=sys.stderr)
        return 1
    busy = [p for p in (port, port + 1) if not _port_free(p)]
    if busy:
        print(f"dev-server: 127.0.0.1:{busy[0]} is in use (the server takes KEYMGMT_DEV_PORT={port} "
              f"and {port + 1}); choose another with KEYMGMT_DEV_PORT", file=sys.stderr)
        return 1
    _fresh_directory(tmp)  # fresh plugin dir and log on every start
    # Ctrl-C, and `kill <pid>` alike, stop everything cleanly; also when started
    # with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    clouds: DemoClouds | None = None
    srv: BaoServer | None = None
    try:
        env: dict[str, str | None] = {}
        if demo:
            print("dev-server: starting the demo clouds (LocalStack takes about 5 s)", file=sys.stderr, flush=True)
            clouds = DemoClouds(tmp / "demo")
            env = clouds.server_env()
        srv = BaoServer(tmp, port=port, env=env)
        install_plugin(srv)
        print(f"export VAULT_ADDR={srv.addr} VAULT_TOKEN={srv.token}")
        if clouds is not None:
            print(f"export KEYMGMT_DEMO={clouds.dir}")
        print(f'export PATH="{VENV_BIN}:$PATH"', flush=True)
        if clouds is not None:
            clouds.write_info(srv)
            print(clouds.banner(srv), flush=True)
        print(f"dev-server: log in {srv.log_path}; Ctrl-C stops the server"
              + (" and the clouds" if clouds else ""), file=sys.stderr, flush=True)
        return srv.proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("dev-server: stopping", file=sys.stderr, flush=True)
        if srv is not None:
            srv.stop()
            if not wait_for(lambda: not plugin_pids(srv), timeout=5):
                print(f"dev-server: killing leftover plugin processes {plugin_pids(srv)}", file=sys.stderr)
                kill_plugins(srv)
        if clouds is not None:
            clouds.stop()
        print("dev-server: stopped", file=sys.stderr, flush=True)


# -- demo mode -------------------------------------------------------------------------------


def _fingerprint_public(public_key: Any) -> str:
    """sha256:<hex> of the DER SubjectPublicKeyInfo, as `vault read keymgmt/key/...` shows it."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _fingerprint_aes(material: bytes) -> str:
    """kcv:<hex>, the key check value: AES-ECB of a zero block, first 3 bytes."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    encryptor = Cipher(algorithms.AES(material), modes.ECB()).encryptor()
    return "kcv:" + (encryptor.update(bytes(16)) + encryptor.finalize())[:3].hex()


class DemoClouds:
    """The Azure and GCP fakes (in this process) and LocalStack (a child), on 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        from fakes.azure_keyvault import AzureKeyVaultFake
        from fakes.gcp_auth import new_service_account
        from fakes.gcp_kms import GcpKmsFake
        from localstack import LocalStack

        self.dir = directory
        self.dir.mkdir(mode=0o700)
        self._write_lock = threading.Lock()
        self._request_log = open(self.dir / REQUEST_LOG, "a", encoding="utf-8")
        clouds = self

        class Azure(AzureKeyVaultFake):
            def _log(self, record: Any) -> None:
                super()._log(record)
                clouds._served(record)

        class Gcp(GcpKmsFake):
            def _log(self, record: Any) -> None:
                super()._log(record)
                clouds._served(record)

        self.azure: Any = None
        self.gcp: Any = None
        self.localstack: Any = None
        try:
            client_secret = secrets.token_urlsafe(24)
            self._secret(AZURE_SECRET_FILE, client_secret)
            self._secret(AWS_SECRET_FILE, secrets.token_urlsafe(30))
            self.azure = Azure(tenant_id=AZURE_TENANT_ID, client_id=AZURE_CLIENT_ID, client_secret=client_secret,
                               managed_identity=False).start()
            account = new_service_account(GCP_PROJECT, "keymgmt-demo")
            self.gcp = Gcp(key_rings=(GCP_KEY_RING,), service_accounts=[account]).start()
            account.write_key_file(self.dir / GCP_ACCOUNT_FILE, self.gcp.token_uri)
            # Last: LocalStack is SIGKILLed when the thread that started it (this one) exits.
            self.localstack = LocalStack(self.dir / "localstack")
            self._write_state()
        except BaseException:
            self.stop()
            raise

    def _secret(self, name: str, value: str) -> None:
        path = self.dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value)

    def server_env(self) -> dict[str, str | None]:
        """The documented overrides that send the plugin to these clouds, and nowhere else."""
        env: dict[str, str | None] = {
            "KEYMGMT_AZURE_KEYVAULT_ENDPOINT": self.azure.vault_url,
            "AZURE_AUTHORITY_HOST": self.azure.authority_url,
            "KEYMGMT_AZURE_IMDS_ENDPOINT": self.azure.imds_url,
            "KEYMGMT_AZURE_CA_FILE": self.azure.ca_pem_path,
            "AWS_KMS_ENDPOINT": self.localstack.endpoint,
            "KEYMGMT_GCP_KMS_ENDPOINT": self.gcp.kms_url,
            "KEYMGMT_GCP_CA_FILE": self.gcp.ca_pem_path,
            # Application default credentials must never reach a metadata server.
            "GCE_METADATA_HOST": "127.0.0.1:9",
            "GCE_METADATA_IP": "127.0.0.1:9",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            # Removals keep the machine's own cloud set-up from taking over
            # (Azure's environment variables take precedence over the map).
            **dict.fromkeys((
                "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_ENVIRONMENT",
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "GOOGLE_CREDENTIALS", "GOOGLE_APPLICATION_CREDENTIALS",
                "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
            )),
        }
        return env

    # -- what the fakes hold ----------------------------------------------------------------

    def _served(self, record: Any) -> None:
        line = json.dumps({
            "time": round(time.time(), 3), "service": record.service, "method": record.method,
            "path": record.path, "status": record.status, "operation": record.operation,
        })
        with self._write_lock:
            self._request_log.write(line + "\n")
            self._request_log.flush()
        self._write_state()

    def state(self) -> dict[str, Any]:
        azure: dict[str, Any] = {}
        if self.azure is not None:
            deleted = set(self.azure.deleted_keys())
            for name in sorted(set(self.azure.keys()) | deleted):
                azure[name] = {
                    "deleted": name in deleted,
                    "versions": [{
                        "version": v.version, "kty": v.kty, "key_ops": v.key_ops, "enabled": v.enabled,
                        "tags": v.tags, "key_exchange_key": v.is_kek,
                        "fingerprint": _fingerprint_public(v.private_key.public_key()),
                    } for v in self.azure.versions(name)],
                }
        gcp: dict[str, Any] = {}
        if self.gcp is not None:
            for name, key in sorted(self.gcp.snapshot().crypto_keys.items()):
                versions = []
                for v in key.versions:
                    if v.material is None:
                        fingerprint = None
                    elif v.public_key_pem is None:
                        fingerprint = _fingerprint_aes(v.material)
                    else:
                        fingerprint = _fingerprint_public(v.private_key().public_key())
                    versions.append({"id": v.id, "state": v.state, "algorithm": v.algorithm,
                                     "protection_level": v.protection_level, "fingerprint": fingerprint})
                gcp[name] = {"purpose": key.purpose, "algorithm": key.algorithm, "primary": key.primary,
                             "labels": key.labels, "versions": versions}

        def failures(fake: Any) -> list[dict[str, str | None]]:
            if fake is None:
                return []
            return [{"source": f.source, "method": f.method, "path": f.path, "operation": f.operation,
                     "message": f.message} for f in fake.validation_failures]

        return {
            "azure": {"keys": azure, "validation_failures": failures(self.azure)},
            "gcp": {"crypto_keys": gcp, "validation_failures": failures(self.gcp)},
        }

    def _write_state(self) -> None:
        with self._write_lock:
            path = self.dir / STATE_FILE
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(self.state(), indent=2) + "\n")
            temporary.replace(path)

    # -- what to tell the user --------------------------------------------------------------

    def write_info(self, srv: BaoServer) -> None:
        info = {
            "vault_addr": srv.addr,
            "server_log": str(srv.log_path),
            "azure": {"vault_url": self.azure.vault_url, "authority_url": self.azure.authority_url,
                      "ca_file": self.azure.ca_pem_path, "tenant_id": AZURE_TENANT_ID, "client_id": AZURE_CLIENT_ID,
                      "client_secret_file": str(self.dir / AZURE_SECRET_FILE),
                      "key_collection": AZURE_KEY_COLLECTION},
            "gcp": {"kms_url": self.gcp.kms_url, "token_uri": self.gcp.token_uri, "ca_file": self.gcp.ca_pem_path,
                    "key_ring": GCP_KEY_RING, "service_account_file": str(self.dir / GCP_ACCOUNT_FILE)},
            "aws": {"endpoint": self.localstack.endpoint, "region": AWS_REGION, "access_key": AWS_ACCESS_KEY,
                    "secret_key_file": str(self.dir / AWS_SECRET_FILE), "localstack_log": str(self.localstack.log_path)},
            "state_file": str(self.dir / STATE_FILE),
            "request_log": str(self.dir / REQUEST_LOG),
        }
        (self.dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")

    def banner(self, srv: BaoServer) -> str:
        bao = subprocess.run([str(VENV_BIN / "bao"), "version"], capture_output=True, text=True, check=True)
        bao_version = " ".join(bao.stdout.split()[:2])  # "OpenBao v2.7.2"
        binary = srv.plugin_dir / PLUGIN_NAME
        digest = hashlib.sha256(binary.read_bytes()).hexdigest()
        localstack_version = self.localstack.health().get("version", "?")
        return f"""
keymgmt demo: every cloud runs on 127.0.0.1; no cloud account is used or reached.

Real:
  {bao_version} server, dev mode (in memory, root token), at {srv.addr}
  the keymgmt plugin {plugin_version()}: {PLUGIN_BINARY} (sha256 {digest[:16]}...),
    registered and mounted at keymgmt/; it generates and keeps the keys, and
    wraps and imports them with each cloud's own import specification, exactly
    as against the real clouds
  AWS KMS: LocalStack {localstack_version}'s KMS emulation, at {self.localstack.endpoint}
Simulated (this project's fakes, plugin-tests/fakes/; credentials valid for this run only):
  Azure Key Vault and Entra ID, at {self.azure.vault_url} and {self.azure.authority_url}
  Google Cloud KMS and its OAuth endpoint, at {self.gcp.kms_url}
  Both check every request against the official API specifications (Key Vault
  keys 7.6 swagger, Cloud KMS discovery document) and unwrap every imported key
  independently with Python's cryptography; a request they reject is listed
  under validation_failures in the state file below.

The plugin reaches them through the server's environment (README: the
settings for private clouds): KEYMGMT_AZURE_KEYVAULT_ENDPOINT,
AZURE_AUTHORITY_HOST, KEYMGMT_AZURE_CA_FILE, AWS_KMS_ENDPOINT,
KEYMGMT_GCP_KMS_ENDPOINT, KEYMGMT_GCP_CA_FILE. The commands are the ones you
would type against the real clouds; the secrets stay in files in $KEYMGMT_DEMO.

In another terminal, in this checkout ({ROOT}), paste the three export
lines above, then the README's workflow ("Try it without a cloud account"),
one step at a time:

{DEMO_COMMANDS}
What the clouds hold, at any moment:
  scripts/dev-server --show        each cloud's copies, with the fingerprints
                                   that `vault read keymgmt/key/example-key` shows
  $KEYMGMT_DEMO/fakes-state.json   the Azure and GCP fakes (JSON, after every request)
  $KEYMGMT_DEMO/requests.log       every request the fakes served (no headers or bodies)
  $KEYMGMT_DEMO/localstack/localstack.log
"""

    def stop(self) -> None:
        """Stop LocalStack (verifying no process of it is left) and the fakes; delete the secrets."""
        errors: list[BaseException] = []
        for part in (self.localstack, self.azure, self.gcp):
            if part is None:
                continue
            try:
                part.stop()
            except Exception as error:  # stop the others anyway
                errors.append(error)
        for name in SECRET_FILES:
            (self.dir / name).unlink(missing_ok=True)
        self._request_log.close()
        if errors:
            raise errors[0]


# -- --show ----------------------------------------------------------------------------------


def _demo_dir() -> Path:
    if os.environ.get("KEYMGMT_DEMO"):
        return Path(os.environ["KEYMGMT_DEMO"])
    return _settings()[1] / "demo"


def aws_state(info: dict[str, Any], secret_key: str) -> list[dict[str, Any]]:
    """Every KMS key LocalStack holds for the demo's account, through boto3."""
    from cryptography.hazmat.primitives import serialization

    from localstack import kms_client

    kms = kms_client(info["endpoint"], info["region"], access_key=info["access_key"], secret_key=secret_key)
    aliases: dict[str, list[str]] = {}
    for page in kms.get_paginator("list_aliases").paginate():
        for alias in page["Aliases"]:
            if "TargetKeyId" in alias:
                aliases.setdefault(alias["TargetKeyId"], []).append(alias["AliasName"])
    keys = []
    for page in kms.get_paginator("list_keys").paginate():
        for entry in page["Keys"]:
            meta = kms.describe_key(KeyId=entry["KeyId"])["KeyMetadata"]
            tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=entry["KeyId"])["Tags"]}
            fingerprint = None
            if meta["KeySpec"] != "SYMMETRIC_DEFAULT" and meta["KeyState"] == "Enabled":  # AWS: DisabledException otherwise
                der = kms.get_public_key(KeyId=entry["KeyId"])["PublicKey"]
                fingerprint = _fingerprint_public(serialization.load_der_public_key(der))
            keys.append({"key_id": meta["KeyId"], "state": meta["KeyState"], "key_spec": meta["KeySpec"],
                         "key_usage": meta["KeyUsage"], "origin": meta["Origin"], "tags": tags,
                         "aliases": sorted(aliases.get(meta["KeyId"], [])), "fingerprint": fingerprint,
                         "created": meta["CreationDate"].timestamp()})
    keys.sort(key=lambda k: (k["created"], k["key_id"]))
    return keys


def show(as_json: bool) -> int:
    directory = _demo_dir()
    try:
        info = json.loads((directory / INFO_FILE).read_text())
        fakes_state = json.loads((directory / STATE_FILE).read_text())
        secret_key = (directory / AWS_SECRET_FILE).read_text()
    except OSError as error:
        print(f"dev-server --show: no running demo in {directory} ({error.strerror}); "
              "start one with scripts/dev-server --demo", file=sys.stderr)
        return 1
    import botocore.exceptions

    try:
        aws_keys = aws_state(info["aws"], secret_key)
    except botocore.exceptions.EndpointConnectionError:
        print(f"dev-server --show: LocalStack does not answer at {info['aws']['endpoint']}; "
              "is the demo still running?", file=sys.stderr)
        return 1
    state = {**fakes_state, "aws": {"keys": aws_keys}}
    if as_json:
        print(json.dumps(state, indent=2))
        return 0
    lines = [f"Azure Key Vault (simulated, {info['azure']['vault_url']}):"]
    for name, key in state["azure"]["keys"].items():
        if all(v["key_exchange_key"] for v in key["versions"]):
            continue  # the plugin's short-lived BYOK exchange keys
        lines.append(f"  {name}{' (deleted, recoverable)' if key['deleted'] else ''}")
        for v in key["versions"]:
            tags = ",".join(f"{k}={t}" for k, t in sorted(v["tags"].items()))
            lines.append(f"    {v['version']}  {v['kty']:7} {'enabled ' if v['enabled'] else 'disabled'}"
                         f"  {tags:16} {v['fingerprint']}")
    lines.append(f"AWS KMS (LocalStack, {info['aws']['endpoint']}, {info['aws']['region']}):")
    for key in state["aws"]["keys"]:
        lines.append(f"  {key['key_id']}  {key['state']:15} {key['key_spec']:17} version="
                     f"{key['tags'].get('keymgmt:version', '?'):3} {' '.join(key['aliases']) or '-'}"
                     f"  {key['fingerprint'] or '(no public key while not enabled)'}")
    lines.append(f"Google Cloud KMS (simulated, {info['gcp']['kms_url']}):")
    for name, key in state["gcp"]["crypto_keys"].items():
        primary = f"  primary={key['primary']}" if key["primary"] else ""
        lines.append(f"  {name.rsplit('/', 1)[-1]}  {key['purpose']}  {key['algorithm']}{primary}")
        for v in key["versions"]:
            lines.append(f"    {v['id']:3} {v['state']:17} {v['fingerprint'] or '(destroyed)'}")
    for cloud in ("azure", "gcp"):
        for failure in state[cloud]["validation_failures"]:
            lines.append(f"{cloud} fake REJECTED {failure['method']} {failure['path']}: {failure['message']}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
