from collections.abc import Iterator
from pathlib import Path

import pytest

from fluidfed.testing import HubProcess

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    """A real hub daemon on a loopback port with its own catalog file."""
    proc = HubProcess(tmp_path / "hub").start()
    try:
        yield proc
    finally:
        proc.stop()
