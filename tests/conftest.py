"""Shared fixtures: a small real serving fixture (checkpoint + zoo profiled on this host), built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def serving_assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(zoo.json, supernet.pt) of a tiny calibrated supernet with 3 subnets, latencies measured on this host."""
    from serving_fixture import build_serving_assets

    return build_serving_assets(tmp_path_factory.mktemp("serving"))


# --- skips: only the optional peers may skip --------------------------------------------------------------------
# Everything the tests need is a required dependency (pyproject.toml) or installed by .ci/run (redis-server), so a
# skip means a broken install. `-rs` (pytest addopts) lists the skips and why; with SUPERSERVE_STRICT_SKIPS=1 (set
# by .ci/run) any skip whose reason does not name an optional peer fails the run.
# A test for the other kind of host may skip too, but only where the host really is the other kind: a "needs a CUDA
# GPU" skip on a machine with CUDA is a broken test, not a missing GPU.
OPTIONAL_PEERS = ("ray", "pytriton")
_unexpected_skips: list[str] = []


def _hardware_skip(reason: str) -> bool:
    import torch

    cuda = torch.cuda.is_available()
    return ("needs a CUDA GPU" in reason and not cuda) or ("needs a host without CUDA" in reason and cuda)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
        if not any(peer in reason.lower() for peer in OPTIONAL_PEERS) and not _hardware_skip(reason):
            _unexpected_skips.append(f"{report.nodeid}: {reason}")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001 - pytest's hook
    if _unexpected_skips:
        terminalreporter.write_line(f"{len(_unexpected_skips)} test(s) skipped for a reason other than an optional "
                                    f"peer (a broken install?):", red=True)
        for line in _unexpected_skips:
            terminalreporter.write_line(f"  {line}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unexpected_skips and os.environ.get("SUPERSERVE_STRICT_SKIPS") == "1" and exitstatus == 0:
        session.exitstatus = 1
