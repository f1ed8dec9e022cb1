"""Specs that cannot work are refused where they are declared, with the field path and what
to do, and a credential is never echoed back."""

import msgspec
import pytest

from fluidfed import codec, validation
from fluidfed.models import (
    BindingStatus,
    CacheSpec,
    CacheTier,
    Cluster,
    Dataset,
    Figures,
    KubeAccess,
    Mount,
)
from fluidfed.units import ByteSize


def problems(d: Dataset) -> dict[str, str]:
    return {p.path: p.message for p in validation.check_dataset(d)}


def ds(*mounts: Mount, **kw: object) -> Dataset:
    return Dataset(name="imagenet", mounts=list(mounts) or [Mount(uri="s3://b/p")], **kw)  # type: ignore[arg-type]


def test_credentials_in_a_uri_are_refused_and_never_printed() -> None:
    got = problems(ds(Mount(uri="s3://AKIAXYZ:supersecret@bucket/prefix")))
    msg = got["dataset.mounts[0].uri"]
    assert "carries credentials" in msg and "'secret'" in msg
    assert "supersecret" not in msg and "AKIAXYZ" not in msg
    # the other messages about the same URI do not echo it either
    got = problems(ds(Mount(uri="ftp://user:pw@host/x")))
    assert all("pw@" not in m for m in got.values())


@pytest.mark.parametrize("key", ["root", "bucket", "container", "allow_anonymous"])
def test_options_that_override_the_uri_are_refused(key: str) -> None:
    got = problems(ds(Mount(uri="s3://b/p", options={key: "/elsewhere"})))
    assert "would override what the uri says" in got[f"dataset.mounts[0].options.{key}"]


def test_an_endpoint_is_a_host_and_port_only() -> None:
    ok = ds(Mount(uri="s3://b/p", options={"endpoint": "http://minio:9000"}))
    assert problems(ok) == {}
    got = problems(ds(Mount(uri="s3://b/p", options={"endpoint": "http://minio:9000/other"})))
    assert "scheme://host[:port] only" in got["dataset.mounts[0].options.endpoint"]
    got = problems(ds(Mount(uri="s3://b/p", options={"endpoint": "minio:9000"})))
    assert "not an http(s) URL" in got["dataset.mounts[0].options.endpoint"]
    got = problems(ds(Mount(uri="https://h/p", options={"endpoint": "http://x"})))
    assert "takes no endpoint" in got["dataset.mounts[0].options.endpoint"]


def test_reserved_label_prefixes_are_refused_on_datasets_and_clusters() -> None:
    got = problems(ds(labels={"fluidfed.io/cluster": "x", "team": "ml"}))
    assert "prefix fluidfed sets itself" in got["dataset.labels.fluidfed.io/cluster"]
    assert "dataset.labels.team" not in got
    c = Cluster(
        name="edge",
        labels={"topology.kubernetes.io/zone": "z1"},
        kubernetes=KubeAccess(in_cluster=True),
    )
    got_c = {p.path: p.message for p in validation.check_cluster(c)}
    assert "have their own fields" in got_c["cluster.labels.topology.kubernetes.io/zone"]


def test_selectors_may_still_match_the_derived_labels() -> None:
    from fluidfed.models import LabelSelector, Placement

    d = ds(placement=Placement(selector=LabelSelector(match_labels={"fluidfed.io/kind": "edge"})))
    assert problems(d) == {}


def test_tier_paths_with_dotdot_and_absurd_sizes_are_refused() -> None:
    tier = CacheTier(medium="SSD", quota=ByteSize(2**30), path="/var/lib/../../etc")
    got = problems(ds(cache=CacheSpec(tiers=[tier])))
    assert "must not contain '..'" in got["dataset.cache.tiers[0].path"]
    huge = CacheTier(medium="MEM", quota=ByteSize(2**51))
    got = problems(ds(cache=CacheSpec(tiers=[huge])))
    assert "above 1PiB" in got["dataset.cache.tiers[0].quota"]
    got = problems(ds(cache=CacheSpec(max_replicas=10**9)))
    assert "is it a typo" in got["dataset.cache.max_replicas"]


def test_binding_names_must_fit_a_label_value() -> None:
    assert validation.check_binding_names("a" * 40, ["b" * 22], "dataset.name") == []
    (p,) = validation.check_binding_names("a" * 40, ["b" * 23, "c"], "dataset.name")
    assert p.path == "dataset.name" and "64 characters" in p.message and "63" in p.message


def test_dataset_references_must_exist_and_not_cycle() -> None:
    a = Dataset(name="a", mounts=[Mount(uri="dataset://b")])
    b = Dataset(name="b", mounts=[Mount(uri="dataset://c")])
    c = Dataset(name="c", mounts=[Mount(uri="dataset://a")])
    (missing,) = validation.check_references(a, {}, "dataset")
    assert missing.path == "dataset.mounts[0].uri" and "apply it first" in missing.message
    (cycle,) = validation.check_references(c, {"a": a, "b": b}, "dataset")
    assert "c -> a -> b -> c" in cycle.message
    (self_ref,) = validation.check_references(
        Dataset(name="s", mounts=[Mount(uri="dataset://s")]), {}, "dataset"
    )
    assert "s -> s" in self_ref.message
    assert (
        validation.check_references(
            b, {"c": Dataset(name="c", mounts=[Mount(uri="s3://x/y")])}, "dataset"
        )
        == []
    )


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"hit_ratio": 1.5}', "$.hit_ratio"),
        (b'{"cache_used": -1}', "$.cache_used"),
        (b'{"metrics": {"cache_used_ratio": 2.0}}', "$.metrics.cache_used_ratio"),
        (b'{"metrics": {"read_bytes_per_second": -5}}', "$.metrics.read_bytes_per_second"),
        (b'{"load": {"id": 1, "blocks": -3}}', "$.load.blocks"),
    ],
)
def test_status_reports_out_of_range_are_refused(body: bytes, where: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=rf"at `\{where}`"):
        codec.decoder(BindingStatus).decode(body)
    assert codec.decoder(Figures).decode(b'{"hit_ratio": 1.0}').hit_ratio == 1.0
