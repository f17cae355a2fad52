"""A corpus of bad inputs, kept as data in corpus/bad_inputs.json (issue 11 item 2).

Every case is one request, through the raw HTTP API (exact bytes: paths are
sent as written, percent-encoding included) or through the `vault` CLI, that
the plugin must refuse. For each case:

- the status is the exact 4xx the data gives, and the error message contains
  every fragment the data gives (the field it is about), none of the `absent`
  ones, and is not huge (no echo of a huge value);
- nothing changed: every storage entry of the mount, read through the
  server's `sys/raw` before and after, is byte for byte the same; and no
  write reached a provider (the Azure fake's record, LocalStack's calls
  through the fault proxy);
- the plugin process is the same one (no crash), and the log shows no panic;
- no secret the case sent, no credential of the fixtures' providers and no
  fragment of any key material is in the answer or in the log.

Cases with `fast` are repeated on fresh names and their median time bounded:
every check happens before expensive work (an RSA-4096 key takes ~0.7 s).

One server (raw storage enabled) holds fixtures of each kind for the
semantic cases to be refused against: keys of each family, an azurekeyvault
provider on the Azure fake and an awskms provider on LocalStack, each with a
distribution (see FIXTURES). A case that does change the state is reported
and the state restored (sys/raw, then a plugin reload), so one bug does not
cascade into the cases after it.

Placeholders in the data: {new} a fresh name, {missing} a name that exists
nowhere, {secret:x} a fresh secret (registered for the suite's final scan),
{repeat:c:n} the character c n times, {long:n} a fresh name of n characters,
{aws_access_key} and {aws_endpoint} the fixture account's; in JSON bodies
{"$repeat": [items], "$times": n} is the items n times over and
{"$keys": "k", "$times": n, "$value": v} an object of n members k0, k1, ...

KEYMGMT_CORPUS_ANSWERS=<file> appends every case's status and message to
<file> as JSON lines, to review what the plugin answers.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import os
import re
import shutil
import statistics
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

import harness
from fakes import AzureKeyVaultFake, FakeKeyVault
from fakes.aws_fault_proxy import AwsFaultProxy
from harness import MOUNT, BaoServer, cli, install_plugin, kill_plugins, plugin_pids, wait_for
from localstack import LocalStack

pytest_plugins = ["aws_fixtures"]

CORPUS = Path(__file__).resolve().parent / "corpus" / "bad_inputs.json"
DATA: dict[str, Any] = json.loads(CORPUS.read_text())
CASES: list[dict[str, Any]] = DATA["cases"]
MAX_MESSAGE = DATA.get("max_message", 2048)
REGION = "us-east-1"

# Fixture objects the cases refer to by name; created in this order.
KEYS = [
    # name, type, extra body, rotations
    ("bi-rsa", "rsa-2048", {}, 1),  # latest_version 2, deletion_allowed false
    ("bi-ec", "ecdsa-p256", {}, 0),
    ("bi-aes", "aes256-gcm96", {}, 0),
    ("bi-aes-mr", "aes256-gcm96", {"replica_regions": "us-west-2"}, 0),
    ("bi-dist-az", "ecdsa-p256", {"deletion_allowed": True}, 0),
    ("bi-dist-aws", "aes256-gcm96", {"deletion_allowed": True, "replica_regions": "us-west-2"}, 0),
    ("bi-dist-aws-plain", "aes256-gcm96", {"deletion_allowed": True}, 0),
    ("bi_under", "ecdsa-p256", {}, 0),
    ("bi.dot", "aes256-gcm96", {}, 0),
    ("bi-" + "l" * 117, "ecdsa-p256", {}, 0),  # 120 characters: fine in Vault, too long for Azure
]
DISTRIBUTIONS = [
    ("bi-az", "bi-dist-az", {"purpose": "sign,verify", "protection": "software"}),
    ("bi-aws", "bi-dist-aws", {"purpose": "encrypt,decrypt"}),
    ("bi-aws", "bi-dist-aws-plain", {"purpose": "encrypt,decrypt"}),
]
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


@dataclass
class Env:
    server: BaoServer
    fake: AzureKeyVaultFake
    proxy: AwsFaultProxy
    uuid: str
    aws_access_key: str
    raw: requests.Session
    pids: list[int] = field(default_factory=list)
    conn: http.client.HTTPConnection | None = None
    # The storage as the last case left it: the next case's "before".
    last_dump: dict[str, bytes] | None = None
    pool: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(max_workers=4))
    local: threading.local = field(default_factory=threading.local)

    def connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=120)
        return self.conn


# -- the server and its fixtures -------------------------------------------------------


def server_env(fake: AzureKeyVaultFake) -> dict[str, str | None]:
    return {
        # Azure: the fake, through the documented settings.
        "KEYMGMT_AZURE_KEYVAULT_ENDPOINT": fake.vault_url,
        "AZURE_AUTHORITY_HOST": fake.authority_url,
        "KEYMGMT_AZURE_IMDS_ENDPOINT": fake.imds_url,
        "KEYMGMT_AZURE_CA_FILE": fake.ca_pem_path,
        "KEYMGMT_AZURE_RETRY_BASE_MS": "50",
        "AZURE_TENANT_ID": None, "AZURE_CLIENT_ID": None, "AZURE_CLIENT_SECRET": None, "AZURE_ENVIRONMENT": None,
        # AWS: nothing of the machine's set-up; the endpoint comes with each provider.
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None,
        "AWS_PROFILE": None, "AWS_KMS_ENDPOINT": None,
        "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "KEYMGMT_AWS_RETRY_BASE_MS": "20",
        "KEYMGMT_AWS_PENDING_WINDOW_DAYS": "7",
        # Everything the plugin could ever log is in the log the leak checks read.
        "KEYMGMT_LOG_LEVEL": "trace",
    }


@pytest.fixture(scope="module")
def env(localstack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    binary = tmp_path_factory.mktemp("bin") / harness.PLUGIN_NAME
    shutil.copy2(harness.require_plugin_binary(), binary)  # one build for the whole module
    client_secret = harness.register_secret(f"AzS3cr3t-{uuid.uuid4().hex}", site="test_bad_inputs: the Azure fake's client secret")
    aws_secret = harness.register_secret(f"AwsS3cr3t/{uuid.uuid4().hex}", site="test_bad_inputs: the AWS account's secret key")
    access_key = "".join(str(uuid.uuid4().int)[:12])  # an account of its own in LocalStack
    with FakeKeyVault(client_secret=client_secret) as fake, AwsFaultProxy(localstack.endpoint) as proxy:
        srv = BaoServer(tmp_path_factory.mktemp("bad-inputs"), env=server_env(fake), raw_storage=True)
        raw = requests.Session()
        raw.headers["X-Vault-Token"] = srv.token
        try:
            install_plugin(srv, binary=binary)
            mounts = raw.get(f"{srv.addr}/v1/sys/mounts", timeout=30).json()["data"]
            e = Env(srv, fake, proxy, mounts[f"{MOUNT}/"]["uuid"], access_key, raw)
            create_fixtures(e, aws_secret)
            register_key_material(e)
            e.pids = running_plugin(e)
            yield e
        finally:
            srv.stop()
            kill_plugins(srv)


def api(e: Env, method: str, path: str, body: dict[str, Any] | None = None) -> requests.Response:
    resp = e.raw.request(method, f"{e.server.addr}/v1/{path}", json=body, timeout=120)
    harness.record_output(f"http {method} {path[:100]} -> {resp.status_code}", resp.text)
    return resp


def create_fixtures(e: Env, aws_secret: str) -> None:
    for name, key_type, extra, rotations in KEYS:
        resp = api(e, "POST", f"{MOUNT}/key/{name}", {"type": key_type, **extra})
        assert resp.status_code == 204, resp.text
        for _ in range(rotations):
            assert api(e, "POST", f"{MOUNT}/key/{name}/rotate").status_code == 204
    resp = api(e, "POST", f"{MOUNT}/kms/bi-az", {
        "provider": "azurekeyvault", "key_collection": "keyvault-name", "credentials": e.fake.credentials})
    assert resp.status_code == 204, resp.text
    resp = api(e, "POST", f"{MOUNT}/kms/bi-aws", {
        "provider": "awskms", "key_collection": REGION,
        "credentials": {"access_key": e.aws_access_key, "secret_key": aws_secret, "endpoint": e.proxy.endpoint}})
    assert resp.status_code == 204, resp.text
    for kms, key, body in DISTRIBUTIONS:
        resp = api(e, "POST", f"{MOUNT}/kms/{kms}/key/{key}", body)
        assert resp.status_code == 204, resp.text


def register_key_material(e: Env) -> None:
    """Fragments of every version's material: no answer and no log may hold them."""
    for path, value in dump(e).items():
        if not path.startswith("key/"):
            continue
        try:
            record = json.loads(value)
        except ValueError:
            continue
        for version in (record.get("versions") or {}).values():
            if isinstance(version, dict) and version.get("material"):
                harness.register_material(base64.b64decode(version["material"]),
                                          site=f"test_bad_inputs: fixture key {record.get('name')!r}")


def running_plugin(e: Env) -> list[int]:
    api(e, "LIST", f"{MOUNT}/key")

    def exactly_one() -> list[int]:
        pids = plugin_pids(e.server)
        return pids if len(pids) == 1 else []

    pids = wait_for(exactly_one, timeout=15)
    assert pids, f"expected one plugin process, found {plugin_pids(e.server)}"
    return pids


# -- storage: a dump through sys/raw, and putting it back ------------------------------------


def raw_path(e: Env, key: str) -> str:
    return f"{e.server.addr}/v1/sys/raw/logical/{e.uuid}/" + urllib.parse.quote(key, safe="/")


def dump(e: Env) -> dict[str, bytes]:
    """Every storage entry of the mount, exact bytes."""
    names: list[str] = []
    pending = [""]
    while pending:
        prefix = pending.pop()
        resp = e.raw.request("LIST", raw_path(e, prefix), timeout=60)
        if resp.status_code == 404:
            continue
        assert resp.status_code == 200, resp.text
        for name in resp.json()["data"]["keys"]:
            (pending if name.endswith("/") else names).append(prefix + name)

    def read(name: str) -> bytes:
        session = getattr(e.local, "session", None)
        if session is None:
            session = e.local.session = requests.Session()
            session.headers["X-Vault-Token"] = e.server.token
        got = session.get(raw_path(e, name), params={"encoding": "base64"}, timeout=60)
        assert got.status_code == 200, got.text
        return base64.b64decode(got.json()["data"]["value"])

    return dict(zip(names, e.pool.map(read, names)))


def restore(e: Env, before: dict[str, bytes], after: dict[str, bytes]) -> None:
    for key in after.keys() - before.keys():
        assert e.raw.delete(raw_path(e, key), timeout=60).status_code == 204
    for key, value in before.items():
        if after.get(key) != value:
            resp = e.raw.put(raw_path(e, key), json={"value": base64.b64encode(value).decode(), "encoding": "base64"},
                             timeout=60)
            assert resp.status_code == 204, resp.text
    # The plugin caches keys: a fresh process reads the restored storage.
    resp = e.raw.put(f"{e.server.addr}/v1/sys/plugins/reload/backend", json={"mounts": [f"{MOUNT}/"]}, timeout=60)
    assert resp.status_code == 200, resp.text
    wait_for(lambda: plugin_pids(e.server) != e.pids, timeout=15)
    e.pids = running_plugin(e)


# -- one case ---------------------------------------------------------------------------------

PLACEHOLDER = re.compile(r"\{(new|missing|aws_access_key|aws_endpoint|secret:\w+|repeat:[^:{}]+:\d+|long:\d+)\}")


@dataclass
class Expansion:
    e: Env
    case_id: str
    serial: int
    secrets: dict[str, str] = field(default_factory=dict)
    new: str = ""

    def __post_init__(self) -> None:
        self.new = f"bi-new-{self.serial}-{uuid.uuid4().hex[:6]}"

    def text(self, value: str) -> str:
        return PLACEHOLDER.sub(self._one, value)

    def _one(self, match: re.Match[str]) -> str:
        word = match.group(1)
        if word == "new":
            return self.new
        if word == "missing":
            return f"bi-missing-{self.serial}"
        if word == "aws_access_key":
            return self.e.aws_access_key
        if word == "aws_endpoint":
            return self.e.proxy.endpoint
        kind, _, rest = word.partition(":")
        if kind == "secret":
            if rest not in self.secrets:
                self.secrets[rest] = harness.register_secret(
                    f"S3CR3T-{uuid.uuid4().hex}", site=f"corpus/bad_inputs.json case {self.case_id!r}")
            return self.secrets[rest]
        if kind == "repeat":
            char, _, count = rest.rpartition(":")
            return char * int(count)
        prefix = f"bilong{self.serial}x"
        return (prefix + "x" * int(rest))[: int(rest)]

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            if "$repeat" in value:  # {"$repeat": [items], "$times": n}: the items n times over
                return self.value(value["$repeat"]) * value["$times"]
            if "$keys" in value:  # {"$keys": "k", "$times": n, "$value": v}: k0..k<n-1>, each v
                return {f"{value['$keys']}{i}": self.value(value["$value"]) for i in range(value["$times"])}
            return {self.text(k): self.value(v) for k, v in value.items()}
        return value


@dataclass
class Answer:
    status: int | None
    message: str
    text: str
    seconds: float


def send_http(e: Env, case: dict[str, Any], x: Expansion) -> Answer:
    path = f"/v1/{MOUNT}/{x.text(case['path'])}" if case["path"] else f"/v1/{MOUNT}"
    headers = {"X-Vault-Token": e.server.token, **case.get("headers", {})}
    body: bytes | None = None
    if "raw" in case:
        body = x.text(case["raw"]).encode()
    elif "json" in case:
        body = json.dumps(x.value(case["json"])).encode()
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    for attempt in range(2):
        conn = e.connection()
        try:
            started = time.monotonic()
            conn.request(case["method"], path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode(errors="replace")
            seconds = time.monotonic() - started
            break
        except (http.client.HTTPException, OSError):
            conn.close()
            e.conn = None
            if attempt:
                raise
    if resp.getheader("Connection", "").lower() == "close":
        conn.close()
        e.conn = None
    harness.record_output(f"http {case['method']} {path[:100]} -> {resp.status}", text)
    try:
        errors = json.loads(text).get("errors")
        message = "\n".join(errors) if isinstance(errors, list) else text
    except (ValueError, AttributeError):
        message = text
    return Answer(resp.status, message, text, seconds)


def send_cli(e: Env, case: dict[str, Any], x: Expansion) -> Answer:
    args = [x.text(a) for a in case["args"]]
    started = time.monotonic()
    result = cli(e.server, *args, check=False)
    seconds = time.monotonic() - started
    text = result.stdout + result.stderr
    code = re.search(r"Code: (\d+)\.", result.stderr)
    status = int(code.group(1)) if code else (404 if "No value found at" in result.stderr else None)
    if result.returncode == 0:
        status = 0  # success: never what a case expects
    return Answer(status, result.stderr, text, seconds)


def writes_to_providers(e: Env) -> tuple[int, int]:
    azure = sum(1 for r in e.fake.requests if r.service == "vault" and r.method != "GET")
    aws = sum(1 for c in e.proxy.calls() if not (c.action or "").startswith(("Describe", "List", "Get")))
    return azure, aws


def run_once(e: Env, case: dict[str, Any], serial: int) -> tuple[list[str], Answer]:
    """Send the case once; every broken rule, and the answer."""
    x = Expansion(e, case["id"], serial)
    before = e.last_dump if e.last_dump is not None else dump(e)
    calls_before = writes_to_providers(e)
    log_offset = e.server.log_path.stat().st_size
    answer = send_cli(e, case, x) if case["via"] == "cli" else send_http(e, case, x)
    problems = []
    if os.environ.get("KEYMGMT_CORPUS_ANSWERS"):  # a file to review every answer in (debugging aid)
        with open(os.environ["KEYMGMT_CORPUS_ANSWERS"], "a") as out:
            out.write(json.dumps({"id": case["id"], "status": answer.status, "message": answer.message[:300]}) + "\n")

    if answer.status != case["status"]:
        problems.append(f"status {answer.status}, expected {case['status']}")
    message = answer.message
    for fragment in case.get("expect", []):
        if x.text(fragment) not in message:
            problems.append(f"message lacks {x.text(fragment)!r}")
    for fragment in case.get("absent", []):
        if x.text(fragment) in message:
            problems.append(f"message shows {x.text(fragment)!r}")
    limit = case.get("max_message", MAX_MESSAGE)
    if len(message) > limit:
        problems.append(f"message of {len(message)} characters (at most {limit})")

    after = dump(e)
    if after != before:
        changed = sorted((after.keys() ^ before.keys()) | {k for k in before.keys() & after.keys() if before[k] != after[k]})
        problems.append("storage changed: " + ", ".join(k[:80] for k in changed))
    calls_after = writes_to_providers(e)
    if calls_after != calls_before:
        problems.append(f"writes reached a provider (Azure, AWS): {calls_before} -> {calls_after}")

    log = e.server.log_path.read_bytes()[log_offset:].decode(errors="replace")
    pids = plugin_pids(e.server)
    if pids != e.pids:
        problems.append(f"the plugin process changed (crash?): {e.pids} -> {pids}")
    if "panicked" in log:
        problems.append("the log shows a panic")

    # Secrets: this case's, the fixtures' credentials, every key's material.
    leaked_here = [v for v in x.secrets.values() if v in answer.text]
    leaked_here += [v for v in harness.SECRETS if v in answer.text and v not in leaked_here]
    if leaked_here:
        sites = sorted({harness.SECRETS.get(v, "this case") for v in leaked_here})
        problems.append(f"the answer shows {len(leaked_here)} secret(s) registered at {sites}")
    if any(v in log for v in harness.SECRETS):
        problems.append("the server log shows a secret")

    e.last_dump = after
    if after != before:
        e.last_dump = None
        restore(e, before, after)
    elif pids != e.pids:
        e.pids = running_plugin(e)
    return problems, answer


def describe(answer: Answer) -> str:
    """The answer for a failure report, with every registered secret blanked out."""
    message = answer.message.strip()
    for value in harness.SECRETS:
        message = message.replace(value, "<a registered secret>")
    status = "success (exit 0)" if answer.status == 0 else answer.status
    return f"observed: {status} {message[:400]!r}"


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input(env: Env, case: dict[str, Any]) -> None:
    serial = CASES.index(case)
    fast = case.get("fast")
    if not fast:
        problems, answer = run_once(env, case, serial)
        assert not problems, "; ".join(problems) + f"\n{describe(answer)}"
        return
    timings = []
    for attempt in range(fast["tries"]):
        problems, answer = run_once(env, case, serial * 100 + attempt)
        assert not problems, "; ".join(problems) + f"\n{describe(answer)}"
        timings.append(answer.seconds)
    median = statistics.median(timings)
    assert median < fast["p50_below"], (
        f"refused in {median:.3f} s at p50 over {len(timings)} tries (bound {fast['p50_below']} s): "
        f"the check comes after expensive work; {describe(answer)}")


# -- the corpus itself -------------------------------------------------------------------------


def test_corpus_covers_the_issue() -> None:
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "case ids are unique"
    assert len(CASES) >= 300
    assert sum(c["via"] == "cli" for c in CASES) >= 40
    for c in CASES:
        assert c["via"] in ("http", "cli"), c["id"]
        assert 400 <= c["status"] < 500, c["id"]
        assert ("method" in c and "path" in c) if c["via"] == "http" else "args" in c, c["id"]
    categories = {c["category"] for c in CASES}
    assert categories >= {"wrong-type", "huge", "number", "unicode-control", "path-trick", "duplicate",
                          "method", "semantic", "fast"}, categories
    # Every field of every path has wrong-type cases.
    wrong_types = [json.dumps(c) for c in CASES if c["category"] == "wrong-type"]
    for name in ("type", "deletion_allowed", "min_enabled_version", "replica_regions", "provider",
                 "key_collection", "credentials", "purpose", "protection"):
        assert sum(f'"{name}"' in text or f"{name}=" in text for text in wrong_types) >= 3, name
    methods = {c["method"] for c in CASES if c["via"] == "http"}
    assert methods >= {"GET", "POST", "PUT", "DELETE", "LIST", "PATCH", "HEAD"}, methods
    assert any("replicate" in c.get("path", "") + " ".join(c.get("args", [])) for c in CASES)
