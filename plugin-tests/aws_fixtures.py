"""Fixtures for the AWS KMS tests: one LocalStack per run, a fault proxy per test.

A test module opts in with `pytest_plugins = ["aws_fixtures"]`. LocalStack
takes several seconds to start, so every module shares the session's instance;
tests keep apart by creating their own keys (and, where a test counts keys or
aliases, by using a region or account of their own).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fakes.aws_fault_proxy import AwsFaultProxy
from localstack import LocalStack


@pytest.fixture(scope="session")
def localstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The run's LocalStack (KMS only, 127.0.0.1); stopping it verifies no process is left."""
    instance = LocalStack(tmp_path_factory.mktemp("localstack"))
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def kms(localstack: LocalStack) -> Any:
    """A boto3 KMS client straight to LocalStack, us-east-1, account 000000000000."""
    return localstack.boto3_client("us-east-1")


@pytest.fixture
def kms_proxy(localstack: LocalStack) -> Iterator[AwsFaultProxy]:
    """A fresh fault proxy in front of the shared LocalStack: no faults queued, no calls recorded."""
    with AwsFaultProxy(localstack.endpoint) as proxy:
        yield proxy


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # A LocalStack failure is rarely explicable without its log: attach the tail.
    report = yield
    if report.failed:
        for instance in LocalStack.running:
            report.sections.append((f"LocalStack log tail ({instance.log_path})", instance.log_tail()))
    return report
