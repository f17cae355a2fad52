"""Run a real OpenBao dev server with the keymgmt plugin, the way a user would.

Everything here talks to 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import bisect
import datetime
import hashlib
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PLUGIN_NAME = "vault-plugin-secrets-keymgmt"
PLUGIN_BINARY = ROOT / "target" / "release" / PLUGIN_NAME
MOUNT = "keymgmt"
ROOT_TOKEN = "root"
# go-plugin magic cookie for Vault/OpenBao backend plugins.
MAGIC_COOKIE = "6669da05-b1c8-4f49-97d9-c8e5bed98e20"
HANDSHAKE_RE = re.compile(r"^1\|5\|unix\|(/[^|]+)\|grpc\|[A-Za-z0-9+/]+$")

T = TypeVar("T")


def free_port(span: int = 1) -> int:
    """A port on 127.0.0.1 such that port .. port+span-1 are all free right now."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + span > 65536:
            continue
        if all(_port_free(p) for p in range(port + 1, port + span)):
            return port
    raise RuntimeError(f"no run of {span} free ports found on 127.0.0.1")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.1) -> T:
    """Poll until predicate() is truthy; return its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def plugin_version() -> str:
    with open(ROOT / "Cargo.toml", "rb") as f:
        return "v" + tomllib.load(f)["package"]["version"]


def require_plugin_binary() -> Path:
    # A missing binary is a broken build, never a reason to skip.
    if not PLUGIN_BINARY.is_file():
        raise FileNotFoundError(f"{PLUGIN_BINARY} is missing; run `cargo build --release`")
    return PLUGIN_BINARY


class BaoServer:
    """`bao server -dev` on 127.0.0.1 with a plugin directory under `tmp`."""

    running: set[BaoServer] = set()

    def __init__(
        self,
        tmp: Path,
        port: int | None = None,
        env: dict[str, str | None] | None = None,
        raw_storage: bool = False,
    ) -> None:
        """`env` adds variables to the server's (and so the plugin's) environment; None removes one.

        `raw_storage` enables `sys/raw`, so that a test can read what the plugin
        stored without going through the plugin (see `stored_key`)."""
        self.tmp = Path(tmp).resolve()
        # The host refuses a plugin_directory that is a symlink.
        self.plugin_dir = self.tmp / "plugins"
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.tmp / "server.log"
        SERVER_LOGS.append(self.log_path)
        # The dev server also binds a cluster listener on port+1.
        self.port = port if port is not None else free_port(span=2)
        self.addr = f"http://127.0.0.1:{self.port}"
        self.token = ROOT_TOKEN
        self.env = {
            **os.environ,
            # The AWS credential chain must never try the instance metadata
            # service: no test leaves 127.0.0.1.
            "AWS_EC2_METADATA_DISABLED": "true",
            "VAULT_ADDR": self.addr,
            "VAULT_TOKEN": self.token,
            "BAO_ADDR": self.addr,
            "BAO_TOKEN": self.token,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        # Host and plugin put their Unix sockets in TMPDIR; keep those (and any a
        # SIGKILLed plugin leaves behind) in tmp, unless that would overflow
        # sun_path (108 bytes) for names like plugin1234567890.
        run_dir = self.tmp / "run"
        if len(str(run_dir)) <= 80:
            run_dir.mkdir(exist_ok=True)
            self.env["TMPDIR"] = str(run_dir)
        for name, value in (env or {}).items():
            if value is None:
                self.env.pop(name, None)
            else:
                self.env[name] = value
        config = self.tmp / "extra.hcl"
        config.write_text(
            f'plugin_directory = "{self.plugin_dir}"\nlog_level = "debug"\n'
            + ("raw_storage_endpoint = true\n" if raw_storage else "")
        )
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(VENV_BIN / "bao"),
                    "server",
                    "-dev",
                    "-dev-root-token-id=" + self.token,
                    f"-dev-listen-address=127.0.0.1:{self.port}",
                    # Keep the dev token out of ~/.vault-token.
                    "-dev-no-store-token",
                    f"-config={config}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                # Own process group: a terminal Ctrl-C reaches us, and we stop bao cleanly.
                start_new_session=True,
            )
        BaoServer.running.add(self)
        try:
            self._wait_healthy(timeout=60)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"bao exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                if requests.get(f"{self.addr}/v1/sys/health", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"bao not healthy after {timeout}s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def unseal_key(self) -> str:
        match = re.search(r"^Unseal Key: (\S+)$", self.log_text(), re.MULTILINE)
        if not match:
            raise RuntimeError("no 'Unseal Key:' line in the dev server output")
        return match.group(1)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM the server and wait; SIGKILL only if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        BaoServer.running.discard(self)
        return self.proc.returncode

    def __enter__(self) -> BaoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CliError(RuntimeError):
    def __init__(self, result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(
            f"`{' '.join(result.args)}` exited {result.returncode}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
        self.result = result


def cli(server: BaoServer, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `vault <args>` (the venv symlink to bao) against `server`."""
    result = subprocess.run(
        [str(VENV_BIN / "vault"), *args],
        env=server.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    record_output(cli_origin(args), result.stdout, result.stderr)
    if check and result.returncode != 0:
        raise CliError(result)
    return result


def http(server: BaoServer, method: str, path: str, **kwargs: Any) -> requests.Response:
    """A raw HTTP API call (`/v1/<path>`) with the server's root token."""
    kwargs.setdefault("timeout", 120)
    resp = requests.request(method, f"{server.addr}/v1/{path}", headers={"X-Vault-Token": server.token}, **kwargs)
    if not path.startswith("sys/raw/"):  # a test reading storage itself sees the material on purpose
        record_output(f"http {method} {path[:100]} -> {resp.status_code}", resp.text)
    return resp


def read_key(server: BaoServer, name: str, mount: str = MOUNT) -> dict[str, Any]:
    """The key's data as `vault read -format=json` shows it."""
    return json.loads(cli(server, "read", "-format=json", f"{mount}/key/{name}").stdout)["data"]


def stored_key(server: BaoServer, name: str, mount: str = MOUNT) -> dict[str, Any]:
    """The key record as the plugin stored it, read through `sys/raw` (the server
    must have `raw_storage=True`): the material, independently of the plugin."""
    mounts = http(server, "GET", "sys/mounts").json()["data"]
    uuid_ = mounts[f"{mount}/"]["uuid"]
    resp = http(server, "GET", f"sys/raw/logical/{uuid_}/key/{name}")
    assert resp.status_code == 200, resp.text
    record = json.loads(resp.json()["data"]["value"])
    # What a test can read of the material must never show anywhere else.
    for version in record.get("versions", {}).values():
        if version.get("material"):
            register_material(base64.b64decode(version["material"]), site=f"stored_key({name!r})")
    return record


def stored_material(server: BaoServer, name: str, version: int, mount: str = MOUNT) -> bytes:
    """A version's secret bytes (AES: the raw key; RSA/EC: PKCS#8 DER) from raw storage."""
    return base64.b64decode(stored_key(server, name, mount)["versions"][str(version)]["material"])


FAILPOINTS_BINARY = ROOT / "target" / "release" / "failpoints" / PLUGIN_NAME


def install_plugin(server: BaoServer, binary: Path | None = None) -> None:
    """Copy, register and mount the plugin at keymgmt/, as the docs tell a user to.

    `binary` replaces the release build, e.g. with FAILPOINTS_BINARY (built by
    scripts/test with the `failpoints` feature)."""
    if binary is not None and not binary.is_file():
        raise FileNotFoundError(f"{binary} is missing; scripts/test builds it")
    binary = binary or require_plugin_binary()
    target = server.plugin_dir / PLUGIN_NAME
    shutil.copy2(binary, target)
    sha256 = hashlib.sha256(target.read_bytes()).hexdigest()
    try:
        cli(
            server,
            "plugin",
            "register",
            f"-sha256={sha256}",
            f"-command={PLUGIN_NAME}",
            f"-version={plugin_version()}",
            "secret",
            MOUNT,
        )
        cli(server, "secrets", "enable", MOUNT)
    except CliError as e:
        e.add_note(f"--- server log tail ({server.log_path}) ---\n{server.log_tail()}")
        raise


def plugin_pids(server: BaoServer) -> list[int]:
    """Live (non-zombie) processes running this server's copy of the plugin."""
    target = str(server.plugin_dir / PLUGIN_NAME)
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(f"{entry.path}/exe").removesuffix(" (deleted)")
            argv0 = Path(f"{entry.path}/cmdline").read_bytes().split(b"\0")[0].decode()
            state = Path(f"{entry.path}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # exited meanwhile, a zombie, or not ours to read
        if target in (exe, argv0) and state != "Z":
            pids.append(int(entry.name))
    return sorted(pids)


def kill_plugins(server: BaoServer) -> None:
    """Test hygiene: SIGKILL whatever plugin processes of `server` are left."""
    for pid in plugin_pids(server):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def host_plugin_env(tmpdir: Path) -> dict[str, str]:
    """The environment OpenBao 2.7.2 gives a v5 plugin (see host-observations.md 1.12)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TMPDIR": str(tmpdir),
        "VAULT_BACKEND_PLUGIN": MAGIC_COOKIE,
        "PLUGIN_PROTOCOL_VERSIONS": "5",
        "PLUGIN_CLIENT_CERT": _self_signed_p521_pem(),
        "PLUGIN_MIN_PORT": "10000",
        "PLUGIN_MAX_PORT": "25000",
        "VAULT_PLUGIN_AUTOMTLS_ENABLED": "true",
        "BAO_PLUGIN_AUTOMTLS_ENABLED": "true",
        "VAULT_PLUGIN_METADATA_MODE": "false",
        "BAO_PLUGIN_METADATA_MODE": "false",
        "VAULT_VERSION": "2.7.2",
        "BAO_VERSION": "2.7.2",
    }


def _self_signed_p521_pem() -> str:
    # Shaped like go-plugin's AutoMTLS client cert.
    key = ec.generate_private_key(ec.SECP521R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(seconds=30))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .sign(key, hashes.SHA512())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def spawn_plugin(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(require_plugin_binary())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def read_handshake(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The plugin's first stdout line (without newline); nothing may follow it."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no stdout line within {timeout}s (got {buf!r})")
            if sel.select(remaining):
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise EOFError(f"stdout closed before a full line (got {buf!r})")
                buf += chunk
    line, rest = buf.split(b"\n", 1)
    if rest:
        raise AssertionError(f"extra stdout after the handshake line: {rest!r}")
    return line.decode()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5) -> int:
    """SIGTERM, then SIGKILL if it does not exit within `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# -- secrets that must never show (issue 11 item 4) ------------------------------
#
# Tests register every secret they use (credentials, tokens, fragments of key
# material). What the harness's cli() and http() got back is appended to a
# per-session transcript as it arrives, so that a secret registered later is
# still caught; at the end of the session conftest.py scans every server log
# and the transcript for every registered value (find_leaks) and fails the run
# on a hit, naming the file and where the secret was registered, never the value.

SECRET_MIN_LENGTH = 8
# value -> where it was registered ("file:line (function)").
SECRETS: dict[str, str] = {}
# Every BaoServer's log file, in start order.
SERVER_LOGS: list[Path] = []
# Set by conftest.py for a pytest session; recording is off without it.
TRANSCRIPT: Path | None = None
_RECORD_SEPARATOR = "\n\x00\x1e"


def _caller_site(depth: int = 2) -> str:
    frame = sys._getframe(depth)
    filename = Path(frame.f_code.co_filename)
    try:
        filename = filename.relative_to(ROOT)
    except ValueError:
        pass
    return f"{filename}:{frame.f_lineno} ({frame.f_code.co_name})"


def register_secret(value: str, site: str | None = None, registry: dict[str, str] | None = None) -> str:
    """Remember `value` as a secret that no log or answer may contain; returns it.

    `site` describes where it comes from (default: the caller's file and line).
    `registry` replaces the session's (for the scanner's own tests)."""
    if len(value) < SECRET_MIN_LENGTH:
        raise ValueError(
            f"a secret of {len(value)} characters would match by chance; register {SECRET_MIN_LENGTH} or more"
        )
    target = SECRETS if registry is None else registry
    target.setdefault(value, site or _caller_site())
    return value


def _windows(secret: bytes) -> list[str]:
    """Encodings of a 16 to 18-byte window from the middle of `secret` that any
    hex, base64 or base64url text containing `secret` contains, whatever its
    alignment within that text."""
    if len(secret) < 16:
        return [secret.hex()] if len(secret) >= 8 else []
    start = max(0, len(secret) // 2 - 10)
    found = [secret[start:start + 16].hex()]
    for shift in range(3):
        chunk = secret[start + shift:start + shift + 18]
        if len(chunk) < 18:
            # Short secrets (AES-256): the whole value's own encodings instead.
            found += [base64.b64encode(secret).decode().rstrip("="),
                      base64.urlsafe_b64encode(secret).decode().rstrip("=")]
            break
        found += [base64.b64encode(chunk).decode(), base64.urlsafe_b64encode(chunk).decode()]
    return found


def _uint(value: int, size: int | None = None) -> bytes:
    return value.to_bytes(size or (value.bit_length() + 7) // 8 or 1, "big")


def register_material(material: bytes, site: str | None = None, registry: dict[str, str] | None = None) -> None:
    """Register fragments of key material: raw AES bytes, or a PKCS#8 DER private key.

    Only private parts are used (an RSA key's d and p, an EC key's scalar), so a
    public key in an answer never matches; plus the PEM body lines that hold
    any of their bytes."""
    site = site or _caller_site()
    try:
        private = serialization.load_der_private_key(material, password=None)
    except (ValueError, TypeError):
        private = None
    if isinstance(private, rsa.RSAPrivateKey):
        numbers = private.private_numbers()
        parts = [_uint(numbers.d), _uint(numbers.p)]
    elif isinstance(private, ec.EllipticCurvePrivateKey):
        parts = [_uint(private.private_numbers().private_value, (private.curve.key_size + 7) // 8)]
    else:
        parts = [material]
    for part in parts:
        for fragment in _windows(part):
            register_secret(fragment, site, registry)
    if private is not None:
        # The PEM body lines (48 bytes of DER each) that hold private bytes.
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        body = pem.strip().splitlines()[1:-1]
        for part in parts:
            at = material.find(part)
            if at < 0:
                continue
            for line in body[at // 48:(at + len(part) - 1) // 48 + 1]:
                if len(line) >= SECRET_MIN_LENGTH:
                    register_secret(line, site, registry)


def register_private_key(key: Any, site: str | None = None, registry: dict[str, str] | None = None) -> None:
    """register_material for a `cryptography` private key object."""
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    register_material(der, site or _caller_site(), registry)


def cli_origin(args: Iterable[str]) -> str:
    """`vault <subcommand> <path>`: no argument that could carry a value."""
    args = list(args)
    path = next((a for a in args[1:] if "/" in a and "=" not in a and not a.startswith("-")), "")
    return f"cli {args[0] if args else ''} {path[:100]}".rstrip()


def record_output(origin: str, *texts: str, transcript: Path | None = None) -> None:
    """Append what a request got back to the session's transcript (no-op outside pytest)."""
    target = transcript or TRANSCRIPT
    if target is None:
        return
    with open(target, "a", encoding="utf-8", errors="surrogateescape") as f:
        f.write(f"{_RECORD_SEPARATOR}{origin}\n" + "\n".join(t for t in texts if t))


def find_leaks(
    logs: Iterable[Path], transcript: Path | None, secrets: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    """(where, registration site) for every registered secret found in a log or
    in an answer of the transcript; `where` is a file, or the transcript and the
    request the answer came to. The secrets themselves are never returned."""
    secrets = SECRETS if secrets is None else secrets
    sources: list[tuple[str, str]] = []
    for path in dict.fromkeys(Path(p).resolve() for p in logs):
        if path.is_file():
            sources.append((str(path), path.read_text(errors="replace")))
    if transcript is not None and Path(transcript).is_file():
        records = Path(transcript).read_text(errors="replace").split(_RECORD_SEPARATOR)
        for record in records[1:]:
            origin, _, text = record.partition("\n")
            sources.append((f"{transcript}: the answer to {origin}", text))
    # One search per secret over all the text at once; offsets map back to sources.
    starts, pieces, offset = [], [], 0
    for _, text in sources:
        starts.append(offset)
        pieces.append(text)
        offset += len(text) + 1
    corpus = "\x00".join(pieces)
    hits: dict[tuple[str, str], None] = {}
    for value, site in secrets.items():
        at = corpus.find(value)
        while at != -1:
            index = bisect.bisect_right(starts, at) - 1
            hits[(sources[index][0], site)] = None
            # One hit per source is enough: go on from the next one.
            at = corpus.find(value, starts[index + 1]) if index + 1 < len(starts) else -1
    return list(hits)
