"""The contract's own logic: how a cluster mounts, the labels a selector sees, a warm-up's
progress, and the decoding policy (strict for what users write, tolerant on the wire)."""

from __future__ import annotations

import gc

import msgspec
import pytest

from devkit import testing
from fluidfed import codec
from fluidfed.models import Binding, Capabilities, Cluster, LoadStatus


def test_only_csi_with_fluid_mounts_by_csi() -> None:
    assert testing.cluster(capabilities=Capabilities(csi=True, fluid=True)).mount_mode() == "csi"
    assert testing.cluster(capabilities=Capabilities(csi=True)).mount_mode() == "sidecar"
    assert testing.cluster(capabilities=Capabilities(fluid=True)).mount_mode() == "sidecar"


def test_selectors_see_derived_labels_and_the_users_win() -> None:
    c = testing.cluster(
        "edge-1", kind="edge", region="eu", labels={"fluidfed.io/kind": "mine", "gpu": "a100"}
    )
    assert c.selector_labels() == {
        "fluidfed.io/cluster": "edge-1",
        "fluidfed.io/kind": "mine",
        "fluidfed.io/mount-mode": "sidecar",
        "topology.kubernetes.io/region": "eu",
        "gpu": "a100",
    }
    assert "topology.kubernetes.io/zone" not in c.selector_labels()


@pytest.mark.parametrize(
    ("status", "percent"),
    [
        (LoadStatus(id=1, phase="Running", blocks=8, done=2, cached=6), 25.0),
        (LoadStatus(id=1, phase="Done", blocks=8, done=8, cached=6), 75.0),
        (LoadStatus(id=1, phase="Failed", blocks=4, done=4, cached=1), 25.0),
        (LoadStatus(id=1, phase="Done"), 100.0),
        (LoadStatus(id=1, phase="Waiting"), 0.0),
    ],
)
def test_load_progress_counts_done_while_running_and_cached_at_the_end(
    status: LoadStatus, percent: float
) -> None:
    assert status.percent() == percent


def test_user_specs_refuse_unknown_keys_but_the_wire_tolerates_them() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field `nmae`"):
        codec.convert({"name": "c", "nmae": "typo"}, Cluster)
    wire = codec.to_builtins(testing.binding())
    wire["added_in_a_later_version"] = 1
    assert codec.convert(wire, Binding) == testing.binding()


def test_what_the_hub_keeps_per_binding_is_not_the_garbage_collectors_work() -> None:
    ds = testing.dataset("d")
    wire = msgspec.json.encode(
        Binding(name="d.c", dataset="d", cluster="c", mode="csi", replicas=1, generation=1, spec=ds)
    )
    b = codec.decoder(Binding).decode(wire)
    assert not gc.is_tracked(b)  # the hub holds one per binding: never walked by collections
    assert b == codec.decoder(Binding).decode(wire)
