from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service import Service, running_service

TOKEN = "test-token-123"


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One service shared by the tests that only need a working gateway (auth on)."""
    with running_service(tmp_path_factory.mktemp("svc"), ["--pool-size", "2"], token=TOKEN) as svc:
        yield svc


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Path:
    """A folder for a test's artefacts (screenshots, logs), kept after the run under test-output/."""
    path = Path(__file__).resolve().parent.parent / "test-output" / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    return path
