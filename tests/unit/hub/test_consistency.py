"""Rules over the whole catalog: binding names that fit a label value, dataset:// references
that exist and do not cycle, and who still mounts a dataset."""

import pytest

from devkit import testing
from fluidfed.models import Dataset, Mount
from hub import consistency


def test_binding_names_must_fit_a_label_value() -> None:
    assert consistency.check_binding_names("a" * 40, ["b" * 22], "dataset.name") == []
    (p,) = consistency.check_binding_names("a" * 40, ["b" * 23, "c"], "dataset.name")
    assert p.path == "dataset.name" and "64 characters" in p.message and "63" in p.message


def test_dataset_references_must_exist_and_not_cycle() -> None:
    a = Dataset(name="a", mounts=[Mount(uri="dataset://b")])
    b = Dataset(name="b", mounts=[Mount(uri="dataset://c")])
    c = Dataset(name="c", mounts=[Mount(uri="dataset://a")])
    (missing,) = consistency.check_references(a, {}, "dataset")
    assert missing.path == "dataset.mounts[0].uri" and "apply it first" in missing.message
    (cycle,) = consistency.check_references(c, {"a": a, "b": b}, "dataset")
    assert "c -> a -> b -> c" in cycle.message
    (self_ref,) = consistency.check_references(
        Dataset(name="s", mounts=[Mount(uri="dataset://s")]), {}, "dataset"
    )
    assert "s -> s" in self_ref.message
    assert (
        consistency.check_references(
            b, {"c": Dataset(name="c", mounts=[Mount(uri="s3://x/y")])}, "dataset"
        )
        == []
    )


def test_referrers_are_the_datasets_that_mount_one() -> None:
    a = Dataset(name="a", mounts=[Mount(uri="dataset://b")])
    b = Dataset(name="b", mounts=[Mount(uri="s3://x/y")])
    assert consistency.referrers("b", {"a": a, "b": b}) == ["a"]
    assert consistency.referrers("a", {"a": a, "b": b}) == []


@pytest.mark.parametrize(
    ("uri", "refused"),
    [
        ("dataset://other", True),
        ("nfs://0a1b-x.cn-hangzhou.nas.aliyuncs.com:/d", True),
        ("juicefs:///d", True),
        ("s3://b/p", False),
        ("file:///data", False),
    ],
)
def test_only_clusters_with_fluid_serve_what_the_sidecar_cannot_read(
    uri: str, refused: bool
) -> None:
    d = testing.dataset("d", mounts=[Mount(uri="s3://b/p"), Mount(uri=uri, name="x")])
    assert consistency.check_served(d, "edge", "csi") == []
    got = consistency.check_served(d, "edge", "sidecar")
    assert [p.path for p in got] == (["dataset.mounts[1].uri"] if refused else [])
    if refused:
        assert "need a cluster with Fluid" in got[0].message and "edge" in got[0].message


def test_a_sidecar_cluster_reads_with_one_secret() -> None:
    """The sidecar and the workers take one set of keys (their environment): mounts naming
    two Secrets would have one read with the other's keys."""
    two = [Mount(uri="s3://a/p", secret="a-keys"), Mount(uri="s3://b/p", name="b", secret="b")]
    d = testing.dataset("d", mounts=two)
    assert consistency.check_served(d, "edge", "csi") == []
    got = consistency.check_served(d, "edge", "sidecar")
    assert [p.path for p in got] == ["dataset.mounts[1].secret"]
    assert "'a-keys'" in got[0].message and "one dataset per Secret" in got[0].message
    same = [Mount(uri="s3://a/p", secret="k"), Mount(uri="s3://b/p", name="b", secret="k")]
    assert consistency.check_served(testing.dataset("d", mounts=same), "edge", "sidecar") == []
