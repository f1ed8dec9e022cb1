"""The worker server's choices that need no server."""

from __future__ import annotations

import pytest

from agents.worker import server
from fluidfed.errors import FluidfedError


@pytest.mark.parametrize(
    ("value", "want"), [("", "auto"), (" always ", "always"), ("never", "never")]
)
def test_how_block_files_are_sent_is_read_from_the_environment(
    value: str, want: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(server.SENDFILE_VAR, value)
    assert server.sendfile_choice() == want


def test_an_unknown_way_of_sending_block_files_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(server.SENDFILE_VAR, "splice")
    with pytest.raises(FluidfedError) as err:
        server.sendfile_choice()
    assert "FLUIDFED_SENDFILE='splice'" in str(err.value)
    assert "auto, always, never" in str(err.value)
