"""LocalStack's AWS KMS on 127.0.0.1, run without Docker, for the plugin's AWS tests.

LocalStack (PyPI `localstack-core==2026.3.0`, the final release) is the only
installable AWS KMS double with GetParametersForImport and ImportKeyMaterial
(moto has neither). It needs Python 3.13, so it runs from its own venv
(`.venv-localstack`, made by `scripts/setup-localstack`) as a child process of
the 3.11 pytest process; tests talk to it over HTTP with boto3.

Findings that decide how tests must use it (all in LOCALSTACK.md, next to
this file, and asserted by the `test_finding_*` tests):

* Account ids come from the access key id in the SigV4 credential scope
  (signatures are never checked). A key starting with 12 digits
  (`123456789012`) is that account. `LSIA...`/`LKIA...` keys of 20+
  characters are base32-decoded (`LSIARZPUZDIKGB2VALC4` -> `123456789012`).
  Everything else maps to `000000000000`: `test`, and also real-looking
  `AKIA...`/`ASIA...` keys (e.g. `AKIAIOSFODNN7EXAMPLE`), which LocalStack
  ignores unless PARITY_AWS_ACCESS_KEY_ID is set (never here). So the plugin and the test's
  boto3 see the same keys exactly when they use the same access key id. A
  random 12-digit key id gives a test an empty account of its own.
* EXTERNAL keys import for SYMMETRIC_DEFAULT, RSA_2048/3072/4096
  (ENCRYPT_DECRYPT and SIGN_VERIFY) and ECC_NIST_P256/P384/P521
  (SIGN_VERIFY). The wrapping algorithms are RSAES_OAEP_SHA_1/256 and
  RSA_AES_KEY_WRAP_SHA_256 (not _SHA_1), and GetPublicKey of an imported key
  is the imported one. But LocalStack checks neither the length of symmetric
  material nor the type of asymmetric material. A PendingImport asymmetric key
  answers GetPublicKey and Sign with a throwaway key, so only an independent
  check proves what was imported: see `assert_symmetric_material` (its
  ciphertext format is documented below) and compare public keys.
* DisableKey/EnableKey on a PendingImport key succeed and change its state
  (AWS: KMSInvalidStateException). ScheduleKeyDeletion on a PendingImport key
  works. On a PendingDeletion key it, DisableKey and EnableKey give 400
  KMSInvalidStateException "<arn> is pending deletion.".
* Re-importing the same symmetric material into an Enabled key succeeds once,
  then gives KMSInvalidStateException "... is pending rotation.".
* ReplicateKey before the import gives a PendingImport replica (as on AWS);
  after it, the replica is Enabled with the primary's material (AWS:
  PendingImport until imported).
* With hypercorn, LocalStack closes the connection after every response
  (`Connection: close`) unless the request asks for keep-alive.

Start-up takes about 5 s on the 2-core machine, most of it the first call
(see `_warm_up`).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv-localstack" / "bin" / "python"
SETUP_SCRIPT = ROOT / "scripts" / "setup-localstack"
VERSION = "2026.3.0"
# What LocalStack 2026.3.0 maps the access key id "test" to (see the module docstring).
DEFAULT_ACCOUNT_ID = "000000000000"
ACCESS_KEY_ID = "test"
SECRET_ACCESS_KEY = "test"

# botocore must never ask the EC2 instance metadata service (169.254.169.254)
# for credentials or a region; every client here gets both explicitly anyway.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


# Runs in the child, then becomes LocalStack: the kernel SIGKILLs it when the
# thread that started it exits, so a crashed or killed pytest leaves no
# LocalStack behind (one that outlives its parent would serve stale state and
# hold its port forever). SIGKILL, not SIGTERM: LocalStack has been seen to
# hang in its shutdown, and it has nothing to save.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "PR_SET_PDEATHSIG = 1\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:\n"
    "    sys.exit('prctl(PR_SET_PDEATHSIG) failed')\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('parent already gone')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class InetSocket:
    """One IPv4/IPv6 socket of a process, as /proc/net/{tcp,udp}[6] shows it."""

    proto: str  # "tcp", "tcp6", "udp", "udp6"
    local: tuple[str, int]
    remote: tuple[str, int]
    listening: bool  # TCP LISTEN, or a bound UDP socket


def _decode_addr(hex_addr: str) -> tuple[str, int]:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:  # four little-endian 32-bit words
        ip = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
    return ip, int(port, 16)


def process_group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields[0] is the state, fields[2] the process group.
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return sorted(pids)


def inet_sockets(pids: list[int]) -> list[InetSocket]:
    """Every IPv4/IPv6 socket the processes `pids` hold open."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[9] not in inodes:
                continue
            local, remote = _decode_addr(cols[1]), _decode_addr(cols[2])
            listening = cols[3] == "0A" if proto.startswith("tcp") else remote[1] == 0
            found.append(InetSocket(proto, local, remote, listening))
    return found


class LocalStack:
    """`python -m localstack.runtime.main` with only KMS, on 127.0.0.1:<port>.

    Everything it writes (state, generated TLS certificate, temporary files)
    goes under `tmp`; its output goes to `tmp/localstack.log`. It runs in its
    own process group so that `stop()` can end it and anything it spawned.
    """

    # Instances not yet stopped: for the log tail on test failure, and atexit.
    running: set[LocalStack] = set()

    def __init__(
        self,
        tmp: Path,
        port: int | None = None,
        timeout: float = 90,
        extra_env: dict[str, str | None] | None = None,
    ) -> None:
        """Start it and wait until KMS answers; `extra_env` adds (None: removes) variables."""
        if not VENV_PYTHON.is_file():
            # A missing dependency is a failure, never a reason to skip.
            raise FileNotFoundError(f"{VENV_PYTHON} is missing; run {SETUP_SCRIPT}")
        self.tmp = Path(tmp).resolve()
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.log_path = self.tmp / "localstack.log"
        self.port = port if port is not None else _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        tmpdir = self.tmp / "tmp"
        tmpdir.mkdir(exist_ok=True)
        # Not os.environ wholesale: an AWS_* or LOCALSTACK_* variable of the
        # caller must not change how this instance behaves, nor the 3.11
        # venv's Python settings leak into the 3.13 one.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "LOCALSTACK_", "GATEWAY_", "DNS_", "PARITY_", "PYTHON"))
            and k not in (
                "SERVICES", "DEBUG", "PERSISTENCE", "VIRTUAL_ENV",
                "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
            )
        }
        env.update({
            # The default (twisted) gateway ignores the host and binds 0.0.0.0.
            "GATEWAY_SERVER": "hypercorn",
            "GATEWAY_LISTEN": f"127.0.0.1:{self.port}",
            "SERVICES": "kms",
            "DNS_ADDRESS": "0",  # no DNS server (it would bind port 53)
            "DISABLE_EVENTS": "1",  # no analytics sent anywhere
            "SKIP_SSL_CERT_DOWNLOAD": "1",  # generate the gateway's cert locally
            # This machine has /.dockerenv, which makes LocalStack think it is in
            # its container and write to /var/lib/localstack, /etc/localstack
            # and /usr/lib/localstack. Host mode puts every directory under
            # FILESYSTEM_ROOT instead.
            "OVERRIDE_IN_DOCKER": "0",
            "FILESYSTEM_ROOT": str(self.tmp / "filesystem"),
            "LOCALSTACK_VOLUME_DIR": str(self.tmp / "volume"),
            "TMPDIR": str(tmpdir),
            "HOME": str(self.tmp / "home"),
            "PYTHONUNBUFFERED": "1",
            # Belt and braces: LocalStack's own AWS clients stay on loopback too.
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": "*",
        })
        for name, value in (extra_env or {}).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        (self.tmp / "home").mkdir(exist_ok=True)
        self.env = env
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(VENV_PYTHON), "-c", _LAUNCHER, str(os.getpid()), str(VENV_PYTHON), "-m", "localstack.runtime.main"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.tmp,
                start_new_session=True,
            )
        self.pgid = self.proc.pid
        LocalStack.running.add(self)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"LocalStack exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                last = self.health()
                if last.get("services", {}).get("kms") in ("available", "running") and self._warm_up():
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"LocalStack KMS not ready after {timeout}s (health: {last}):\n{self.log_tail()}")

    def _warm_up(self) -> bool:
        """One ListKeys: LocalStack builds its request handling on the first call (~5 s).

        The call creates nothing, and makes the first real call of a test as
        fast as the rest, so timeouts in tests need no slack for it.
        """
        request = urllib.request.Request(
            f"{self.endpoint}/",
            data=b"{}",
            headers={
                "X-Amz-Target": "TrentService.ListKeys",
                "Content-Type": "application/x-amz-json-1.1",
                # LocalStack does not check signatures; it reads the access key
                # id and the region from the credential scope.
                "Authorization": (
                    f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/20260101/us-east-1/kms/aws4_request, "
                    "SignedHeaders=host, Signature=0"
                ),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status == 200
        except urllib.error.URLError:
            return False

    def health(self) -> dict[str, Any]:
        """`/_localstack/health`, e.g. {"services": {"kms": "available", ...}, "version": "2026.3.0"}."""
        with urllib.request.urlopen(f"{self.endpoint}/_localstack/health", timeout=2) as r:
            return json.load(r)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def pids(self) -> list[int]:
        """LocalStack's live processes (its whole process group)."""
        return process_group_pids(self.pgid)

    def sockets(self) -> list[InetSocket]:
        """Every IPv4/IPv6 socket LocalStack's processes hold right now."""
        return inet_sockets(self.pids())

    def boto3_client(
        self,
        region: str = "us-east-1",
        *,
        endpoint: str | None = None,
        access_key: str = ACCESS_KEY_ID,
        secret_key: str = SECRET_ACCESS_KEY,
        retries: bool = True,
        read_timeout: float = 30,
    ) -> Any:
        """A boto3 KMS client for this instance, or for `endpoint` (a proxy in front of it).

        Credentials, region and endpoint are explicit and the shared config
        files are ignored, so nothing on the machine can send it elsewhere.
        `retries=False` makes exactly one attempt, so injected faults surface.
        """
        return kms_client(
            endpoint or self.endpoint, region,
            access_key=access_key, secret_key=secret_key, retries=retries, read_timeout=read_timeout,
        )

    def stop(self, grace: float = 0.0, timeout: float = 10.0) -> int | None:
        """Kill the whole process group and verify that no process of it is left.

        SIGKILL at once by default: LocalStack keeps nothing worth saving (its
        state lives in memory and under `tmp`), its log is unbuffered, and its
        graceful shutdown takes about 4 s and has been seen to hang. With
        `grace` > 0 it gets SIGTERM and that long first.
        """
        if grace > 0 and self.pids():
            self._signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.pids() and time.monotonic() < deadline:
                self.proc.poll()  # reap, so the main process stops counting
                time.sleep(0.05)
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            self._signal(signal.SIGKILL)
            self.proc.poll()
            time.sleep(0.05)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        LocalStack.running.discard(self)
        left = self.pids()
        if left:
            raise RuntimeError(f"LocalStack processes still alive after stop: {left}")
        return self.proc.returncode

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.pgid, signum)
        except ProcessLookupError:
            pass

    @classmethod
    def stop_all(cls) -> None:
        """Stop every instance still running (registered with atexit)."""
        for instance in list(cls.running):
            instance.stop()

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


atexit.register(LocalStack.stop_all)


def kms_client(
    endpoint: str,
    region: str = "us-east-1",
    *,
    access_key: str = ACCESS_KEY_ID,
    secret_key: str = SECRET_ACCESS_KEY,
    retries: bool = True,
    read_timeout: float = 30,
) -> Any:
    """A boto3 KMS client bound to `endpoint` only (see `LocalStack.boto3_client`)."""
    import boto3
    import botocore.config
    import botocore.session

    core = botocore.session.Session()
    core.set_config_variable("config_file", os.devnull)
    core.set_config_variable("credentials_file", os.devnull)
    session = boto3.session.Session(
        botocore_session=core,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
    )
    config = botocore.config.Config(
        retries={"total_max_attempts": 1 if not retries else 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=read_timeout,
    )
    return session.client("kms", endpoint_url=endpoint, config=config)


# LocalStack's SYMMETRIC_DEFAULT CiphertextBlob (services/kms/models.py):
#   key id (36 ASCII bytes, the key's UUID) || IV (16) || GCM tag (16) || ciphertext
# where ciphertext = AES-GCM(material, IV, AAD)(PKCS#7-padded plaintext) and
# AAD = key+value of each encryption-context pair, sorted by key, concatenated.
# Not AWS's format (opaque there); it is what lets a test check imported
# material without trusting the importer.
_BLOB_KEY_ID_LEN = 36
_BLOB_IV_LEN = 16
_BLOB_TAG_LEN = 16
_BLOB_HEADER_LEN = _BLOB_KEY_ID_LEN + _BLOB_IV_LEN + _BLOB_TAG_LEN
_AES_BLOCK = 16  # LocalStack PKCS#7-pads the plaintext, although GCM needs no padding


def _encryption_context_aad(context: dict[str, str] | None) -> bytes:
    return b"".join(k.encode() + v.encode() for k, v in sorted((context or {}).items()))


def decrypt_symmetric_blob(material: bytes, blob: bytes, encryption_context: dict[str, str] | None = None) -> bytes:
    """Decrypt a CiphertextBlob that LocalStack's Encrypt made, with key material we know.

    Raises `cryptography.exceptions.InvalidTag` when `material` is not the
    key's current material.
    """
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    iv = blob[_BLOB_KEY_ID_LEN : _BLOB_KEY_ID_LEN + _BLOB_IV_LEN]
    tag = blob[_BLOB_KEY_ID_LEN + _BLOB_IV_LEN : _BLOB_HEADER_LEN]
    decryptor = Cipher(algorithms.AES(material), modes.GCM(iv, tag)).decryptor()
    decryptor.authenticate_additional_data(_encryption_context_aad(encryption_context))
    padded = decryptor.update(blob[_BLOB_HEADER_LEN:]) + decryptor.finalize()
    return padded[: -padded[-1]]


def encrypt_symmetric_blob(
    key_id: str, material: bytes, plaintext: bytes, encryption_context: dict[str, str] | None = None
) -> bytes:
    """A CiphertextBlob in LocalStack's format, made locally, that its Decrypt accepts
    only if the key `key_id` holds `material`."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if len(key_id) != _BLOB_KEY_ID_LEN:
        raise ValueError(f"key id must be the {_BLOB_KEY_ID_LEN}-character UUID, not {key_id!r}")
    iv = os.urandom(_BLOB_IV_LEN)
    encryptor = Cipher(algorithms.AES(material), modes.GCM(iv)).encryptor()
    encryptor.authenticate_additional_data(_encryption_context_aad(encryption_context))
    pad = _AES_BLOCK - len(plaintext) % _AES_BLOCK
    ciphertext = encryptor.update(plaintext + bytes([pad]) * pad) + encryptor.finalize()
    return key_id.encode() + iv + encryptor.tag + ciphertext


def assert_symmetric_material(kms: Any, key_id: str, material: bytes) -> None:
    """Check, both ways, that the SYMMETRIC_DEFAULT key `key_id` holds exactly `material`.

    KMS encrypts and we decrypt locally; we encrypt locally and KMS decrypts.
    Neither direction trusts whoever imported the material. `key_id` is the
    key's UUID (or an ARN/alias that resolves to it).
    """
    probe = os.urandom(24)
    context = {"purpose": "material-check"}
    blob = kms.encrypt(KeyId=key_id, Plaintext=probe, EncryptionContext=context)["CiphertextBlob"]
    if decrypt_symmetric_blob(material, blob, context) != probe:
        raise AssertionError("KMS ciphertext decrypted locally to a different plaintext")
    uuid_ = blob[:_BLOB_KEY_ID_LEN].decode()
    local = encrypt_symmetric_blob(uuid_, material, probe, context)
    if kms.decrypt(CiphertextBlob=local, KeyId=key_id, EncryptionContext=context)["Plaintext"] != probe:
        raise AssertionError("KMS decrypted a locally made ciphertext to a different plaintext")
