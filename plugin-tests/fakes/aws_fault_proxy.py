"""A loopback HTTP proxy in front of LocalStack that injects AWS KMS faults.

LocalStack is a faithful enough AWS KMS, but it never throttles, never fails
and never loses a response, and those are exactly the cases the plugin's
retry and resume logic exists for. This proxy sits between the plugin (or a
boto3 client) and LocalStack: it forwards every request's bytes unchanged and
returns LocalStack's response bytes unchanged, except where a queued fault for
that KMS action says otherwise. KMS speaks awsJson1_1, so the action is the
`X-Amz-Target: TrentService.<Action>` header.

It is a raw HTTP/1.1 relay, not a parser that rebuilds messages: the request
line, headers (order, case, `Content-Length`, `Transfer-Encoding`) and body
bytes (chunk framing included) reach LocalStack as the client sent them. The
one optional exception is `upstream_keep_alive` (see `AwsFaultProxy`).

Fault kinds (`FaultPlan.add`):

* `throttle`: HTTP 400 `ThrottlingException` "Rate exceeded", not forwarded
* `500`: HTTP 500 `KMSInternalException`, not forwarded
* `503`: HTTP 503 `ServiceUnavailableException`, not forwarded
* `dependency-timeout`: HTTP 503 `DependencyTimeoutException`, not forwarded
* `access-denied`: HTTP 400 `AccessDeniedException` naming the `kms:` action
  and resource as IAM does, not forwarded
* `lost`: forwarded, so the action takes effect in LocalStack; then the
  client connection is closed without any response
* `drop`: the client connection is closed; nothing is forwarded
* `delay:<seconds>`: wait, then forward

Every call is recorded (action, region, status, fault), never a body or a
header value: those carry key material, import tokens and signatures.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import socketserver
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from email.utils import formatdate
from typing import BinaryIO
from urllib.parse import urlsplit

DEFAULT_ACCOUNT_ID = "000000000000"

_FAULT_KINDS = re.compile(r"^(throttle|500|503|dependency-timeout|access-denied|lost|drop|delay:\d+(\.\d+)?)$")
# status, __type, message; AWS KMS's awsJson1_1 error shape.
_FAULT_ERRORS = {
    "throttle": (400, "ThrottlingException", "Rate exceeded"),
    "500": (500, "KMSInternalException", "The request was rejected because an internal exception occurred. The request can be retried."),
    "503": (503, "ServiceUnavailableException", "Service Unavailable"),
    "dependency-timeout": (503, "DependencyTimeoutException", "The system timed out while trying to fulfill the request. You can retry the request."),
}
_REASONS = {200: "OK", 400: "Bad Request", 500: "Internal Server Error", 503: "Service Unavailable"}
_TARGET_PREFIX = "TrentService."
_MAX_HEADER_BYTES = 64 * 1024
_CLIENT_IDLE_TIMEOUT = 60.0
_UPSTREAM_TIMEOUT = 120.0
_POLL_INTERVAL = 0.05  # how quickly serve_forever notices shutdown()


@dataclass
class _Fault:
    action: str
    kind: str
    remaining: int
    skip: int


class FaultPlan:
    """Queued faults per KMS action (or "*" for any request).

    A call counts towards every pending fault whose action matches it: a fault
    added with `skip=N` lets N matching calls pass (counted from when it was
    added) and then applies to the next `times` matching calls. When several
    faults are due, the first one queued applies.
    """

    def __init__(self) -> None:
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()

    def add(self, action: str, kind: str, times: int = 1, skip: int = 0) -> None:
        if not _FAULT_KINDS.match(kind):
            raise ValueError(f"unknown fault kind {kind!r}")
        if times < 1:
            raise ValueError("times must be >= 1")
        if skip < 0:
            raise ValueError("skip must be >= 0")
        with self._lock:
            self._faults.append(_Fault(action, kind, times, skip))

    def take(self, action: str | None) -> str | None:
        """The fault for this call, if any, consuming one use of it."""
        with self._lock:
            due = None
            for fault in self._faults:
                if fault.action not in ("*", action):
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                elif due is None:
                    due = fault
            if due is None:
                return None
            due.remaining -= 1
            if due.remaining == 0:
                self._faults.remove(due)
            return due.kind

    def pending(self) -> list[tuple[str, str, int, int]]:
        """(action, kind, times left, calls still to skip) of each queued fault."""
        with self._lock:
            return [(f.action, f.kind, f.remaining, f.skip) for f in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()


@dataclass(frozen=True)
class CallRecord:
    """One request through the proxy. Bodies and headers are never kept: they carry secrets."""

    action: str | None  # "CreateKey"; None for a request without a TrentService target
    region: str | None  # from the SigV4 credential scope
    status: int | None  # what LocalStack (or the fault) answered; None if nothing was
    fault: str | None  # the fault kind applied, if any


class _Message:
    """The raw head (start line + headers) of an HTTP/1.1 message, plus what framing needs."""

    def __init__(self, head: bytes) -> None:
        self.head = head
        lines = head.decode("latin-1").split("\r\n")
        self.start_line = lines[0]
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            if line[0] in " \t" and self.headers:  # obsolete line folding
                name, value = self.headers[-1]
                self.headers[-1] = (name, value + " " + line.strip())
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"malformed header line {line!r}")
            self.headers.append((name.strip(), value.strip()))

    def get(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(values) if values else None

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for t in (self.get(name) or "").split(",") if t.strip()}

    @property
    def chunked(self) -> bool:
        return "chunked" in self.tokens("Transfer-Encoding")

    @property
    def content_length(self) -> int | None:
        value = self.get("Content-Length")
        return None if value is None else int(value.split(",")[0])


def _read_head(reader: BinaryIO) -> bytes | None:
    """Bytes up to and including the blank line; None on a clean EOF before any byte."""
    head = bytearray()
    while True:
        line = reader.readline(_MAX_HEADER_BYTES + 1)
        if not line:
            if head:
                raise ConnectionError("connection closed inside a message head")
            return None
        if not head and line in (b"\r\n", b"\n"):
            continue  # tolerated empty line between messages (RFC 9112 2.2)
        head += line
        if len(head) > _MAX_HEADER_BYTES:
            raise ValueError("message head too large")
        if line in (b"\r\n", b"\n"):
            return bytes(head)


def _read_exact(reader: BinaryIO, n: int) -> bytes:
    data = reader.read(n)
    if len(data) != n:
        raise ConnectionError(f"connection closed after {len(data)} of {n} body bytes")
    return data


def _read_chunked(reader: BinaryIO) -> bytes:
    """The raw chunked body, framing and trailers included, exactly as received."""
    raw = bytearray()
    while True:
        size_line = reader.readline(_MAX_HEADER_BYTES)
        if not size_line:
            raise ConnectionError("connection closed inside a chunked body")
        raw += size_line
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            break
        raw += _read_exact(reader, size + 2)  # data and its CRLF
    while True:  # trailers, then the final blank line
        line = reader.readline(_MAX_HEADER_BYTES)
        if not line:
            raise ConnectionError("connection closed inside chunked trailers")
        raw += line
        if line in (b"\r\n", b"\n"):
            return bytes(raw)


def _read_body(reader: BinaryIO, message: _Message) -> bytes:
    if message.chunked:
        return _read_chunked(reader)
    length = message.content_length
    return _read_exact(reader, length) if length else b""


def _credential_scope(authorization: str | None) -> tuple[str | None, str | None]:
    """(access key id, region) from a SigV4 Authorization header; neither is a secret."""
    match = re.search(r"Credential=([^/,\s]+)/\d{8}/([^/,\s]+)/", authorization or "")
    return (match.group(1), match.group(2)) if match else (None, None)


def _account_for(access_key_id: str | None) -> str:
    """The account LocalStack 2026.3.0 files requests of this access key id under (the common cases)."""
    if access_key_id and re.match(r"\d{12}", access_key_id):
        return access_key_id[:12]
    return DEFAULT_ACCOUNT_ID


class AwsFaultProxy:
    """A threaded proxy on 127.0.0.1 relaying to `upstream` (an http://127.0.0.1 URL).

    `latency_s` adds a fixed delay before every forwarded call (for
    benchmarks); it may be changed while the proxy runs.

    `upstream_keep_alive`: LocalStack (with the hypercorn gateway) answers
    `Connection: close` to every request that does not ask for keep-alive
    explicitly, so through a byte-for-byte relay each call costs a new
    connection, where AWS keeps connections open. With this set, the proxy adds
    `Connection: keep-alive` to requests that carry no `Connection` header of
    their own, the only change it ever makes to a request, so both hops stay
    open as they would with AWS.
    """

    def __init__(
        self,
        upstream: str,
        *,
        latency_s: float = 0.0,
        upstream_keep_alive: bool = False,
        principal: str | None = None,
    ) -> None:
        url = urlsplit(upstream)
        if url.scheme != "http" or url.hostname != "127.0.0.1" or url.port is None:
            raise ValueError(f"upstream must be http://127.0.0.1:<port>, not {upstream!r}")
        self.upstream = (url.hostname, url.port)
        self.faults = FaultPlan()
        self.latency_s = latency_s
        self.upstream_keep_alive = upstream_keep_alive
        # Who AccessDeniedException says was refused; the account is filled in per call.
        self.principal = principal or "arn:aws:iam::{account}:user/keymgmt-test"
        self.connections_accepted = 0
        self._calls: list[CallRecord] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(_POLL_INTERVAL,), name="aws-fault-proxy", daemon=True
        )
        self._started = False

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AwsFaultProxy:
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open connections, so nothing outlives the proxy."""
        if self._started:
            self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        if self._started:
            self._thread.join()

    def __enter__(self) -> AwsFaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_fault(self, action: str, kind: str, times: int = 1, skip: int = 0) -> None:
        """Shorthand for `faults.add`."""
        self.faults.add(action, kind, times, skip)

    def calls(self, action: str | None = None) -> list[CallRecord]:
        """Every call so far, oldest first; only those of `action` if given."""
        with self._lock:
            return [c for c in self._calls if action is None or c.action == action]

    def counts(self) -> Counter[str | None]:
        """How many calls each action had (None: requests without a KMS target)."""
        with self._lock:
            return Counter(c.action for c in self._calls)

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def _record(self, record: CallRecord) -> None:
        with self._lock:
            self._calls.append(record)

    def _count_connection(self) -> None:
        with self._lock:
            self.connections_accepted += 1

    def _access_denied_message(self, action: str | None, access_key_id: str | None, region: str | None, body: bytes) -> str:
        account = _account_for(access_key_id)
        try:
            fields = json.loads(body or b"{}")
        except ValueError:
            fields = {}
        key = (fields.get("KeyId") or fields.get("TargetKeyId")) if isinstance(fields, dict) else None
        if not isinstance(key, str) or not key:
            resource = "*"
        elif key.startswith("arn:"):
            resource = key
        elif key.startswith("alias/"):
            resource = f"arn:aws:kms:{region}:{account}:{key}"
        else:
            resource = f"arn:aws:kms:{region}:{account}:key/{key}"
        principal = self.principal.format(account=account)
        return (
            f"User: {principal} is not authorized to perform: kms:{action} on resource: {resource} "
            f"because no identity-based policy allows the kms:{action} action"
        )


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: AwsFaultProxy

    def __init__(self, address: tuple[str, int], handler: type[socketserver.BaseRequestHandler]) -> None:
        super().__init__(address, handler)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            (self._connections.add if open_ else self._connections.discard)(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients and LocalStack hanging up mid-message is part of the job, not an error."""


class _Upstream:
    """One connection to LocalStack, opened on demand and reopened after it closes."""

    def __init__(self, address: tuple[str, int], server: _Server) -> None:
        self._address = address
        self._server = server
        self._sock: socket.socket | None = None
        self._reader: BinaryIO | None = None

    def exchange(self, request: bytes, head_only: bool) -> tuple[_Message, bytes, bool]:
        """Send `request`; return the final response head, its raw body, and whether it ended the connection."""
        if self._sock is not None and self._stale():
            self.close()
        if self._sock is None:
            self._sock = socket.create_connection(self._address, timeout=_UPSTREAM_TIMEOUT)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._server.track(self._sock, True)
            self._reader = self._sock.makefile("rb")
        assert self._reader is not None
        self._sock.sendall(request)
        while True:
            raw = _read_head(self._reader)
            if raw is None:
                raise ConnectionError("LocalStack closed the connection without a response")
            response = _Message(raw)
            status = int(response.start_line.split()[1])
            if 100 <= status < 200 and status != 101:
                continue  # interim; the proxy answered Expect: 100-continue itself
            break
        closes = "close" in response.tokens("Connection")
        if head_only or status in (204, 304):
            body = b""
        elif response.chunked or response.content_length is not None:
            body = _read_body(self._reader, response)
        else:  # delimited by the end of the connection
            body = self._reader.read()
            closes = True
        if closes:
            self.close()
        return response, body, closes

    def _stale(self) -> bool:
        """Whether LocalStack closed the kept-alive connection while it was idle.

        Checked before sending, never by retrying after: a retried request
        could run a non-idempotent action twice.
        """
        assert self._sock is not None
        readable, _, _ = select.select([self._sock], [], [], 0)
        if not readable:
            return False
        try:
            return self._sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def close(self) -> None:
        if self._sock is not None:
            self._server.track(self._sock, False)
            with contextlib.suppress(OSError):
                self._sock.close()
            if self._reader is not None:
                with contextlib.suppress(OSError):
                    self._reader.close()
        self._sock = None
        self._reader = None


class _Handler(socketserver.StreamRequestHandler):
    server: _Server
    timeout = _CLIENT_IDLE_TIMEOUT

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)
        # No Nagle delay in either direction: it would add the peer's
        # delayed ACK (40 ms) to calls that write in more than one piece.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.proxy._count_connection()

    def finish(self) -> None:
        self.server.track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def handle(self) -> None:
        proxy = self.server.proxy
        upstream = _Upstream(proxy.upstream, self.server)
        try:
            while self._serve_one(proxy, upstream):
                pass
        except (OSError, ValueError):
            pass  # a client or LocalStack hung up or sent garbage: end this connection
        finally:
            upstream.close()

    def _hang_up(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _serve_one(self, proxy: AwsFaultProxy, upstream: _Upstream) -> bool:
        """Relay one request; True if the client connection stays open for another."""
        raw_head = _read_head(self.rfile)
        if raw_head is None:
            return False
        request = _Message(raw_head)
        method, _, rest = request.start_line.partition(" ")
        version = rest.rsplit(" ", 1)[-1]
        if "100-continue" in request.tokens("Expect"):
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()
        body = _read_body(self.rfile, request)
        target = request.get("X-Amz-Target") or ""
        action = target[len(_TARGET_PREFIX):] if target.startswith(_TARGET_PREFIX) else None
        access_key_id, region = _credential_scope(request.get("Authorization"))
        client_keep_alive = (
            "close" not in request.tokens("Connection")
            and (version != "HTTP/1.0" or "keep-alive" in request.tokens("Connection"))
        )

        fault = proxy.faults.take(action) if action is not None else None
        if fault == "drop":
            proxy._record(CallRecord(action, region, None, fault))
            self._hang_up()
            return False
        if fault in _FAULT_ERRORS or fault == "access-denied":
            if fault == "access-denied":
                status, error_type = 400, "AccessDeniedException"
                message = proxy._access_denied_message(action, access_key_id, region, body)
            else:
                status, error_type, message = _FAULT_ERRORS[fault]
            self._send_error(status, error_type, message, client_keep_alive)
            proxy._record(CallRecord(action, region, status, fault))
            return client_keep_alive

        if fault is not None and fault.startswith("delay:"):
            time.sleep(float(fault.removeprefix("delay:")))
        if proxy.latency_s > 0:
            time.sleep(proxy.latency_s)
        head = raw_head
        if proxy.upstream_keep_alive and request.get("Connection") is None:
            head = raw_head[:-2] + b"Connection: keep-alive\r\n\r\n"
        try:
            response, response_body, upstream_closed = upstream.exchange(head + body, method.upper() == "HEAD")
        except OSError:
            upstream.close()
            proxy._record(CallRecord(action, region, None, fault))
            self._hang_up()  # what a client of a vanished server sees
            return False
        status = int(response.start_line.split()[1])
        proxy._record(CallRecord(action, region, status, fault))
        if fault == "lost":
            self._hang_up()
            return False
        self.wfile.write(response.head + response_body)
        self.wfile.flush()
        # The client read LocalStack's own framing and Connection header; a
        # response that ended LocalStack's connection ends the client's too.
        if upstream_closed:
            return False
        return client_keep_alive

    def _send_error(self, status: int, error_type: str, message: str, keep_alive: bool) -> None:
        """An error as AWS KMS's awsJson1_1 protocol shapes it."""
        payload = json.dumps({"__type": error_type, "message": message}, separators=(",", ":")).encode()
        headers = [
            f"HTTP/1.1 {status} {_REASONS[status]}",
            f"x-amzn-RequestId: {uuid.uuid4()}",
            f"x-amzn-ErrorType: {error_type}",
            "Content-Type: application/x-amz-json-1.1",
            f"Content-Length: {len(payload)}",
            f"Date: {formatdate(usegmt=True)}",
        ]
        if not keep_alive:
            headers.append("Connection: close")
        self.wfile.write(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + payload)
        self.wfile.flush()
