"""What counts as a difference between a desired object and the live one."""

from typing import Any

from agents import diff


def test_subset_compare() -> None:
    want = {
        "metadata": {"name": "x", "labels": {"a": "1"}},
        "spec": {"replicas": 2, "ports": [{"port": 1}]},
    }
    live: dict[str, Any] = {
        "metadata": {"name": "x", "labels": {"a": "1", "b": "2"}, "resourceVersion": "9"},
        "spec": {"replicas": 2, "ports": [{"port": 1, "protocol": "TCP"}]},
        "status": {},
    }
    assert diff.is_subset(want, live)
    assert not diff.needs_apply({"apiVersion": "v1", "kind": "X", **want}, live)
    assert diff.needs_apply({"apiVersion": "v1", "kind": "X", **want}, None)
    live["spec"]["replicas"] = 3
    assert not diff.is_subset(want, live)
    live["spec"]["replicas"] = 2
    live["spec"]["ports"].append({"port": 2})
    assert not diff.is_subset(want, live)  # a list must match in length
