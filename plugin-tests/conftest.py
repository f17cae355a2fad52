"""Fixtures: a shared OpenBao server with keymgmt/ mounted, and fresh ones on demand."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import hvac
import pytest

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
