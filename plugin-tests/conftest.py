"""Fixtures: a shared OpenBao server with keymgmt/ mounted, and fresh ones on demand."""

from __future__ import annotations

import functools
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest

import cluster
import fakes
import harness
from fakes import azure_auth, gcp_auth, gcp_kms
from harness import BaoServer, install_plugin, kill_plugins


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoServer]:
    """One server for the whole run; tests on it must use unique names."""
    srv = BaoServer(tmp_path_factory.mktemp("bao"))
    try:
        install_plugin(srv)
        yield srv
    finally:
        srv.stop()
        kill_plugins(srv)


@pytest.fixture
def fresh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], BaoServer]]:
    """Factory for private servers (plugin mounted), for destructive lifecycle tests."""
    started: list[BaoServer] = []

    def make() -> BaoServer:
        srv = BaoServer(tmp_path_factory.mktemp("fresh"))
        started.append(srv)
        install_plugin(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
        kill_plugins(srv)


@pytest.fixture
def client(server: BaoServer) -> hvac.Client:
    return hvac.Client(url=server.addr, token=server.token)


@pytest.fixture
def name() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    # Most failures are only explicable with the server log: attach its tail.
    report = yield
    if report.failed:
        for srv in BaoServer.running:
            report.sections.append((f"server log tail ({srv.log_path})", srv.log_tail()))
    return report


# -- the whole-suite secret scan (issue 11 item 4) --------------------------------
#
# Every secret a test registers (harness.register_secret) is searched for, at the
# end of the session, in every server log (each BaoServer's and each cluster
# node's, where the plugin's stderr goes) and in every answer the harness's
# cli() and http() (and the cluster's) got back. A hit fails the run.

_FAKE_AUTHORITIES: list[Any] = []


def _remember_instances(cls: type) -> None:
    original = cls.__init__

    @functools.wraps(original)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        _FAKE_AUTHORITIES.append(self)

    cls.__init__ = init  # type: ignore[method-assign]


# The fakes' token endpoints: their tokens and client secrets are registered at the end.
_remember_instances(azure_auth.TokenIssuer)
_remember_instances(gcp_auth.GoogleAuth)


def _registering_service_account(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def make(*args: Any, **kwargs: Any) -> Any:
        account = original(*args, **kwargs)
        harness.register_private_key(account.private_key, site="a GCP fake service account's key (new_service_account)")
        return account

    return make


fakes.new_service_account = gcp_auth.new_service_account = gcp_kms.new_service_account = (
    _registering_service_account(gcp_auth.new_service_account))


def _recording(method: Callable[..., Any], kind: str) -> Callable[..., Any]:
    """A BaoCluster method that records what it got back, like harness.cli() and http()."""

    @functools.wraps(method)
    def call(self: Any, i: int, *args: Any, **kwargs: Any) -> Any:
        try:
            result = method(self, i, *args, **kwargs)
        except harness.CliError as error:
            harness.record_output(f"node{i} {harness.cli_origin(args)}", error.result.stdout, error.result.stderr)
            raise
        if kind == "http":
            harness.record_output(f"node{i} http {args[0]} {str(args[1])[:100]} -> {result.status_code}", result.text)
        else:
            harness.record_output(f"node{i} {harness.cli_origin(args)}", result.stdout, result.stderr)
        return result

    return call


cluster.BaoCluster.http = _recording(cluster.BaoCluster.http, "http")  # type: ignore[method-assign]
cluster.BaoCluster.cli = _recording(cluster.BaoCluster.cli, "cli")  # type: ignore[method-assign]


def _basetemp(config: pytest.Config) -> Path:
    factory = getattr(config, "_tmp_path_factory", None)
    return factory.getbasetemp() if factory is not None else Path(tempfile.mkdtemp(prefix="keymgmt-tests-"))


def pytest_sessionstart(session: pytest.Session) -> None:
    harness.TRANSCRIPT = _basetemp(session.config) / "answers.transcript"
    harness.TRANSCRIPT.touch(mode=0o600)


def _register_fake_secrets() -> None:
    for authority in _FAKE_AUTHORITIES:
        name = type(authority).__name__
        values = list(getattr(authority, "_tokens", {}))
        if getattr(authority, "client_secret", None):
            values.append(authority.client_secret)
        for value in values:
            if len(value) >= harness.SECRET_MIN_LENGTH:
                harness.register_secret(value, site=f"a token or client secret of a fake's {name}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.config.option.collectonly or harness.TRANSCRIPT is None:
        return
    started = time.monotonic()
    _register_fake_secrets()
    logs = [*harness.SERVER_LOGS, *_basetemp(session.config).rglob("server.log")]
    leaks = harness.find_leaks(logs, harness.TRANSCRIPT)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    write = reporter.write_line if reporter is not None else (lambda line, **_: print(line, file=sys.stderr))
    summary = (f"secret scan: {len(harness.SECRETS)} registered secrets, {len(set(logs))} server logs and "
               f"the answers in {harness.TRANSCRIPT}, {time.monotonic() - started:.1f} s")
    if not leaks:
        write(f"\n{summary}: no secret found")
        return
    write(f"\n{summary}: {len(leaks)} LEAKS (values not shown)", red=True, bold=True)
    for where, site in leaks:
        write(f"  {where}: holds a secret registered at {site}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
