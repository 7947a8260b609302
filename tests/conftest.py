"""Shared fixtures: a small real serving fixture (checkpoint + zoo profiled on this host), built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def serving_assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(zoo.json, supernet.pt) of a tiny calibrated supernet with 3 subnets, latencies measured on this host."""
    from serving_fixture import build_serving_assets

    return build_serving_assets(tmp_path_factory.mktemp("serving"))
