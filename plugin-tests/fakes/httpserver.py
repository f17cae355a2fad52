"""Threaded HTTP(S) listeners with request logging and fault injection.

Shared plumbing for the cloud fakes: a service supplies one function from
`Request` to `Response`; the listener handles TLS, keep-alive, logging and
injected faults, so that service code only models the cloud's behaviour.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    operation: str | None = None

    def encode(self) -> bytes:
        return b"" if self.body is None else json.dumps(self.body).encode()


@dataclass(frozen=True)
class RequestRecord:
    """One served request. Bodies and headers are never kept: they carry secrets."""

    service: str
    method: str
    path: str
    query: dict[str, list[str]]
    status: int | None
    operation: str | None


Handler = Callable[[Request], Response]

_POLL_INTERVAL = 0.05  # how quickly serve_forever notices shutdown()
_FAULT_KINDS = re.compile(r"^(429|500|503|drop|delay:\d+(\.\d+)?)$")
_FAULT_ERRORS = {
    429: ("Throttled", "Request was not processed because too many requests were received."),
    500: ("InternalServerError", "Injected internal server error."),
    503: ("ServiceUnavailable", "Injected service unavailability."),
}


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    kind: str
    remaining: int


class FaultPlan:
    """Queued faults; the first pending one whose method and path match fires."""

    def __init__(self) -> None:
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()

    def add(self, method: str, path_regex: str, kind: str, times: int = 1) -> None:
        if not _FAULT_KINDS.match(kind):
            raise ValueError(f"unknown fault kind {kind!r}")
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._faults.append(_Fault(method.upper(), re.compile(path_regex), kind, times))

    def take(self, method: str, path: str) -> str | None:
        with self._lock:
            for fault in self._faults:
                if fault.method in ("*", method) and fault.path.search(path):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault.kind
        return None


def _fault_response(kind: str) -> Response:
    status = int(kind)
    code, message = _FAULT_ERRORS[status]
    headers = {"Retry-After": "1"} if status == 429 else {}
    return Response(status, {"error": {"code": code, "message": message}}, headers)


class Listener:
    """One loopback HTTP or HTTPS server running `handler` on its own thread."""

    def __init__(
        self,
        service: str,
        handler: Handler,
        faults: FaultPlan,
        log: Callable[[RequestRecord], None],
        on_crash: Callable[[Request, str], None],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.service = service
        self._handler = handler
        self._faults = faults
        self._log = log
        self._on_crash = on_crash
        self._server = _Server(("127.0.0.1", 0), _RequestHandler)
        self._server.listener = self
        if tls is not None:
            self._server.socket = tls.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.scheme = "https" if tls is not None else "http"
        # Seconds every request waits before it is served, as a far cloud
        # region would answer; the wait holds no lock.
        self.latency = 0.0
        self._in_flight = 0
        self.max_in_flight = 0
        # The same, per HTTP method: imports apart from the reads around them.
        self._in_flight_by_method: dict[str, int] = {}
        self.max_in_flight_by_method: dict[str, int] = {}
        self._count_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(_POLL_INTERVAL,), name=f"fake-{service}", daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and cut kept-alive connections, so nothing outlives the fake."""
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        self._thread.join()

    def serve(self, request: Request) -> Response | None:
        """Count the request in flight, wait `latency`, then serve it."""
        method = request.method
        with self._count_lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            now = self._in_flight_by_method.get(method, 0) + 1
            self._in_flight_by_method[method] = now
            self.max_in_flight_by_method[method] = max(self.max_in_flight_by_method.get(method, 0), now)
        try:
            if self.latency:
                time.sleep(self.latency)
            return self._serve(request)
        finally:
            with self._count_lock:
                self._in_flight -= 1
                self._in_flight_by_method[method] -= 1

    def reset_max_in_flight(self) -> None:
        with self._count_lock:
            self.max_in_flight = self._in_flight
            self.max_in_flight_by_method = dict(self._in_flight_by_method)

    def _serve(self, request: Request) -> Response | None:
        """Apply any injected fault, then the handler; None means drop."""
        kind = self._faults.take(request.method, request.path)
        response: Response | None
        if kind == "drop":
            response = None
        elif kind is not None and not kind.startswith("delay:"):
            response = _fault_response(kind)
        else:
            if kind is not None:
                time.sleep(float(kind.removeprefix("delay:")))
            response = self._run_handler(request)
        self._log(RequestRecord(
            self.service, request.method, request.path, request.query,
            None if response is None else response.status,
            None if response is None else response.operation,
        ))
        return response

    def _run_handler(self, request: Request) -> Response:
        """A bug in the fake becomes a reported 500, not a silently dropped connection."""
        try:
            return self._handler(request)
        except Exception:
            self._on_crash(request, traceback.format_exc())
            return Response(500, {"error": {"code": "FakeCrashed", "message": "the fake raised; see its failures"}})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    listener: Listener

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
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

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up or refusing our certificate is not an error here."""


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)
        # Headers and body go out as two writes; with Nagle on, the body
        # waits for the client's delayed ACK (40 ms on Linux) on every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except (OSError, ssl.SSLError):
                self.server.track(self.connection, False)
                raise

    def finish(self) -> None:
        self.server.track(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: `Listener` keeps a structured log instead."""

    def _dispatch(self) -> None:
        body = self._read_body()
        url = urlsplit(self.path)
        request = Request(
            self.command, url.path, parse_qs(url.query, keep_blank_values=True),
            self.headers, body,
        )
        response = self.server.listener.serve(request)
        if response is None:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload = response.encode()
        self.send_response(response.status)
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        if response.body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch
