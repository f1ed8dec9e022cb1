from pathlib import Path

import pytest

from agents.state import AgentState, StateFile
from devkit import testing
from fluidfed.errors import ConfigError


def test_state_round_trips_and_is_replaced_atomically(tmp_path: Path) -> None:
    f = StateFile(tmp_path / "s")
    assert f.load("edge").bindings == {}
    b = testing.binding(testing.dataset("d", uri="file:///x"), "edge")
    state = AgentState(
        cluster="edge",
        revision=7,
        bindings={b.name: b},
        statuses={b.name: testing.binding_status("Bound")},
        unsent=[b.name],
    )
    f.save(state)
    assert f.load("edge") == state
    assert not (tmp_path / "s" / "state.tmp").exists()
    with pytest.raises(ConfigError, match="own state_dir"):
        f.load("other")


def test_token_is_private(tmp_path: Path) -> None:
    f = StateFile(tmp_path)
    f.save_token("ffc.edge.secret")
    assert f.load_token() == "ffc.edge.secret"
    assert (f.token_path.stat().st_mode & 0o777) == 0o600
