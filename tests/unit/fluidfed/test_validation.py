"""The cross-field rules a type cannot say: every problem, each at its field path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from devkit import testing
from fluidfed import codec, engines, validation
from fluidfed.errors import Problem
from fluidfed.models import (
    Access,
    AgentConfig,
    AutoscalePolicy,
    AutoscaleTarget,
    BindingStatus,
    CacheSpec,
    CacheTier,
    Cluster,
    Dataset,
    Document,
    Figures,
    HubConfig,
    KubeAccess,
    LabelSelector,
    Mount,
    Placement,
    SelectorRequirement,
)
from fluidfed.units import ByteSize, Duration


def where(problems: list[Problem]) -> dict[str, str]:
    return {p.path: p.message for p in problems}


def test_a_valid_dataset_has_no_problems() -> None:
    assert validation.check_dataset(testing.dataset("imagenet-train")) == []


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a", True),
        ("imagenet-2", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("Caps", False),
        ("-a", False),
        ("a-", False),
        ("a.b", False),
        ("", False),
        ("imagenet\n", False),  # (`$` matches before a trailing newline: fullmatch)
    ],
)
def test_names_are_dns_labels(name: str, ok: bool) -> None:
    assert (validation.check_dns_label(name, "x.name", "dataset name") == []) is ok


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("gpu", True),
        ("example.com/tier", True),
        ("a_b.c-d", True),
        ("Example.com/tier", False),
        ("example.com/", False),
        ("x" * 64, False),
        ("bad key", False),
    ],
)
def test_label_keys_take_an_optional_dns_prefix(key: str, ok: bool) -> None:
    assert (validation.check_label_key(key, "l") == []) is ok


def test_cache_rules_name_each_field() -> None:
    cache = CacheSpec(
        replicas=5,
        min_replicas=1,
        max_replicas=3,
        block_size=ByteSize(4096),
        tiers=[
            testing.cache_tier("MEM", 0),
            testing.cache_tier("MEM", 1, min_free=0.3),
            testing.cache_tier("SSD", 1, min_free=1.0),
            testing.cache_tier("HDD", 1, "relative/dir", high=0.5, low=0.5),
        ],
    )
    got = where(validation.check_cache(cache, "c"))
    assert got == {
        "c.replicas": "replicas (5) must lie between min_replicas (1) and max_replicas (3)",
        "c.block_size": "block_size must be between 64KiB and 64MiB",
        "c.tiers[0].quota": "quota must be above zero",
        "c.tiers[1]": "a second MEM tier; merge them",
        "c.tiers[1].min_free": "min_free is a disk tier's (the fraction of its filesystem kept "
        "free): a MEM tier holds its blocks in memory; leave it out",
        "c.tiers[2].path": "a SSD tier needs a directory in 'path'",
        "c.tiers[3].path": "path must be absolute",
        "c.tiers[3].low": "low watermark (0.5) must be below high watermark (0.5)",
        "c.tiers[2].min_free": "min_free (1.0) is the fraction of the tier's filesystem kept "
        "free: below 1 (0 turns it off)",
    }
    # JuiceFS's MEM tier is files in /dev/shm: its floor is JuiceFS's free-space-ratio
    jfs = CacheSpec(engine="juicefs", tiers=[testing.cache_tier("MEM", 1, min_free=0.3)])
    assert validation.check_cache(jfs, "c") == []
    inverted = CacheSpec(replicas=5, min_replicas=4, max_replicas=3, tiers=[])
    assert where(validation.check_cache(inverted, "c")) == {
        "c.min_replicas": "min_replicas (4) is above max_replicas (3)",
        "c.tiers": "at least one cache tier is needed",
    }


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("ftp://host/x", "has no supported scheme"),
        ("s3:///prefix", "names no a bucket or host"),
        ("dataset://", "names no a dataset name"),
        ("file://data", "names a host"),
        ("file://data/x", "three slashes"),
    ],
)
def test_mount_uris(uri: str, needle: str) -> None:
    got = where(validation.check_dataset(testing.dataset(uri=uri)))
    assert needle in got["dataset.mounts[0].uri"]


def test_mounts_may_not_land_on_one_path_and_credentials_stay_in_secrets() -> None:
    ds = testing.dataset(
        mounts=[
            Mount(uri="s3://a", name="imgs"),
            Mount(uri="s3://b", path="imgs", options={"aws_secret_access_key": "x"}),
        ]
    )
    got = where(validation.check_dataset(ds))
    assert (
        got["dataset.mounts[1].path"]
        == "two mounts appear at /imgs: give each a distinct name or path"
    )
    assert "looks like a credential" in got["dataset.mounts[1].options.aws_secret_access_key"]
    assert validation.check_dataset(testing.dataset(mounts=[Mount(uri="s3://a")])) == []


def test_access_entries() -> None:
    ds = testing.dataset(
        access=[
            Access(namespace="ml"),
            Access(namespace="ml", sub_path="../etc"),
            Access(namespace="x", sub_path="/abs"),
        ]
    )
    got = where(validation.check_dataset(ds))
    assert got["dataset.access[1].namespace"] == "namespace ml is listed twice"
    assert got["dataset.access[1].sub_path"].startswith("sub_path must be relative")
    assert got["dataset.access[2].sub_path"].startswith("sub_path must be relative")
    assert (
        validation.check_dataset(
            testing.dataset(access=[Access(namespace="ml", sub_path="train/a")])
        )
        == []
    )


def test_autoscale_targets() -> None:
    policy = AutoscalePolicy(
        targets=[
            AutoscaleTarget(metric="hit_ratio", target=0.9),
            AutoscaleTarget(metric="hit_ratio", target=1.5),
        ],
        min_replicas=4,
        max_replicas=2,
    )
    got = where(validation.check_dataset(testing.dataset(autoscale=policy)))
    assert got == {
        "dataset.autoscale.min_replicas": "min_replicas (4) is above max_replicas (2)",
        "dataset.autoscale.targets[1]": "metric hit_ratio is targeted twice",
        "dataset.autoscale.targets[1].target": "hit_ratio is a ratio: target must be in (0, 1], got 1.5",
    }


def test_cluster_access_to_kubernetes() -> None:
    ctx_only = testing.cluster("c1", kubernetes=KubeAccess(context="prod"))
    got = where(validation.check_cluster(ctx_only))
    assert got["cluster.kubernetes.context"] == "context needs a kubeconfig path"
    assert "say how the agent reaches the cluster" in got["cluster.kubernetes"]
    assert validation.check_cluster(testing.cluster("c1")) == []
    bad = testing.cluster("C1", labels={"ok": "-bad-"})
    assert set(where(validation.check_cluster(bad))) == {"cluster.name", "cluster.labels.ok"}


def test_documents_hub_and_agent() -> None:
    assert [p.message for p in validation.check_document(Document())] == [
        "the file declares nothing: expected a [cluster], [dataset], [hub] or [agent] table"
    ]
    twice = Document(dataset=[testing.dataset("d"), testing.dataset("d")])
    assert where(validation.check_document(twice)) == {
        "dataset[1].name": "dataset d is declared twice"
    }
    hub = HubConfig(data_dir="", lease_duration=Duration(0.5))
    assert set(where(validation.check_hub(hub))) == {"hub.data_dir", "hub.lease_duration"}
    agent = AgentConfig(cluster_file="", hub="127.0.0.1:8470", heartbeat_interval=Duration(0))
    assert where(validation.check_agent(agent)) == {
        "agent.cluster_file": "name the cluster's TOML file",
        "agent.hub": "expected http(s)://HOST[:PORT], got '127.0.0.1:8470'",
        "agent.heartbeat_interval": "heartbeat_interval must be above zero",
    }


def test_an_absolute_mount_path_clashes_with_a_named_mount() -> None:
    ds = testing.dataset(
        mounts=[Mount(uri="s3://a", name="imgs"), Mount(uri="s3://b", path="/imgs")]
    )
    assert "dataset.mounts[1].path" in where(validation.check_dataset(ds))


def test_a_label_key_with_an_empty_prefix_is_refused() -> None:
    assert validation.check_label_key("/tier", "l") != []


# --- specs that cannot work are refused, and a credential is never echoed ---


def refused(d: Dataset) -> dict[str, str]:
    return {p.path: p.message for p in validation.check_dataset(d)}


def ds(*mounts: Mount, **kw: object) -> Dataset:
    return Dataset(name="imagenet", mounts=list(mounts) or [Mount(uri="s3://b/p")], **kw)  # type: ignore[arg-type]


def test_credentials_in_a_uri_are_refused_and_never_printed() -> None:
    got = refused(ds(Mount(uri="s3://AKIAXYZ:supersecret@bucket/prefix")))
    msg = got["dataset.mounts[0].uri"]
    assert "carries credentials" in msg and "'secret'" in msg
    assert "supersecret" not in msg and "AKIAXYZ" not in msg
    # the other messages about the same URI do not echo it either
    got = refused(ds(Mount(uri="ftp://user:pw@host/x")))
    assert all("pw@" not in m for m in got.values())


@pytest.mark.parametrize("key", ["root", "bucket", "container", "allow_anonymous"])
def test_options_that_override_the_uri_are_refused(key: str) -> None:
    got = refused(ds(Mount(uri="s3://b/p", options={key: "/elsewhere"})))
    assert "would override what the uri says" in got[f"dataset.mounts[0].options.{key}"]


def test_an_endpoint_is_a_host_and_port_only() -> None:
    ok = ds(Mount(uri="s3://b/p", options={"endpoint": "http://minio:9000"}))
    assert refused(ok) == {}
    got = refused(ds(Mount(uri="s3://b/p", options={"endpoint": "http://minio:9000/other"})))
    assert "scheme://host[:port] only" in got["dataset.mounts[0].options.endpoint"]
    got = refused(ds(Mount(uri="s3://b/p", options={"endpoint": "minio:9000"})))
    assert "not an http(s) URL" in got["dataset.mounts[0].options.endpoint"]
    got = refused(ds(Mount(uri="https://h/p", options={"endpoint": "http://x"})))
    assert "takes no endpoint" in got["dataset.mounts[0].options.endpoint"]


def test_reserved_label_prefixes_are_refused_on_datasets_and_clusters() -> None:
    got = refused(ds(labels={"fluidfed.io/cluster": "x", "team": "ml"}))
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
    assert refused(d) == {}


def test_a_sidecars_tiers_are_checked_as_tiers_and_take_no_path() -> None:
    tiers = [
        CacheTier(medium="SSD", quota=ByteSize(2**30), path="relative/nvme"),
        CacheTier(medium="MEM", quota=ByteSize(0), path="/dev/shm"),
    ]
    got = refused(ds(cache=CacheSpec(sidecar_tiers=tiers)))
    assert got == {
        "dataset.cache.sidecar_tiers[0].path": "a sidecar's disk tier is an emptyDir of the "
        "reader's pod, which the webhook adds and mounts: remove path",
        "dataset.cache.sidecar_tiers[1].medium": "a MEM tier after a slower one: list the "
        "tiers fastest first (MEM, SSD, HDD); new blocks go into the first, evicted ones move "
        "down",
        "dataset.cache.sidecar_tiers[1].quota": "quota must be above zero",
        "dataset.cache.sidecar_tiers[1].path": "a sidecar's MEM tier is the sidecar's own "
        "memory: remove path",
    }
    # (one problem per field: "path must be absolute" is not said beside it)
    assert len(validation.check_cache(CacheSpec(sidecar_tiers=tiers), "c")) == 4
    # a disk tier needs no path here: the webhook gives it one
    ok = [
        CacheTier(medium="MEM", quota=ByteSize(2**28)),
        CacheTier(medium="SSD", quota=ByteSize(2**34)),
    ]
    assert refused(ds(cache=CacheSpec(sidecar_tiers=ok))) == {}


def test_tier_paths_with_dotdot_and_absurd_sizes_are_refused() -> None:
    tier = CacheTier(medium="SSD", quota=ByteSize(2**30), path="/var/lib/../../etc")
    got = refused(ds(cache=CacheSpec(tiers=[tier])))
    assert "must not contain '..'" in got["dataset.cache.tiers[0].path"]
    huge = CacheTier(medium="MEM", quota=ByteSize(2**51))
    got = refused(ds(cache=CacheSpec(tiers=[huge])))
    assert "above 1PiB" in got["dataset.cache.tiers[0].quota"]
    got = refused(ds(cache=CacheSpec(max_replicas=10**9)))
    assert "is it a typo" in got["dataset.cache.max_replicas"]


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


def test_selector_operators_and_placement_names() -> None:
    sel = LabelSelector(
        match_expressions=[
            SelectorRequirement(key="gpu", operator="Exists", values=["a100"]),
            SelectorRequirement(key="env", operator="DoesNotExist", values=["x"]),
            SelectorRequirement(key="env", operator="In"),
        ]
    )
    ds = testing.dataset(placement=Placement(clusters=["ok", "Not_A_Name"], selector=sel))
    got = where(validation.check_dataset(ds))
    ex = "dataset.placement.selector.match_expressions"
    assert got[f"{ex}[0].values"] == "operator Exists takes no values; remove 'values'"
    assert got[f"{ex}[1].values"] == "operator DoesNotExist takes no values; remove 'values'"
    assert got[f"{ex}[2].values"] == "operator In needs at least one value"
    assert "cluster name" in got["dataset.placement.clusters[1]"]
    assert "dataset.placement.clusters[0]" not in got


def test_an_autoscale_maximum_past_sanity_is_refused() -> None:
    policy = AutoscalePolicy(
        targets=[AutoscaleTarget(metric="hit_ratio", target=0.9)], max_replicas=5000
    )
    got = where(validation.check_dataset(testing.dataset(autoscale=policy)))
    assert got == {
        "dataset.autoscale.max_replicas": "max_replicas (5000) is above 1000: is it a typo?"
    }


def test_a_mounts_secret_is_a_kubernetes_name() -> None:
    ds = testing.dataset(mounts=[Mount(uri="s3://bucket/p", secret="S3_Keys")])
    assert "secret name" in where(validation.check_dataset(ds))["dataset.mounts[0].secret"]
    ok = testing.dataset(mounts=[Mount(uri="s3://bucket/p", secret="s3-keys")])
    assert validation.check_dataset(ok) == []


def test_the_agent_keeps_its_token_off_plain_http_when_given_tls_files() -> None:
    plain = AgentConfig(cluster_file="c.toml", hub="http://hub:8470", ca_file="ca.crt")
    assert where(validation.check_agent(plain)) == {
        "agent.hub": "ca_file and client certificates are for an https:// hub: use its https URL"
    }
    cert_only = AgentConfig(
        cluster_file="c.toml", hub="https://hub:8470", client_cert_file="agent.crt"
    )
    assert where(validation.check_agent(cert_only)) == {
        "agent.client_cert_file": "client_cert_file and client_key_file go together: give "
        "both or neither"
    }
    both = AgentConfig(
        cluster_file="c.toml",
        hub="https://hub:8470",
        ca_file="ca.crt",
        client_cert_file="agent.crt",
        client_key_file="agent.key",
    )
    assert validation.check_agent(both) == []


def test_what_kubernetes_would_refuse_later_is_refused_here() -> None:
    from fluidfed.models import Capabilities, Resources

    cache = CacheSpec(resources=Resources(cpu="lots", memory="a bit"), image="reg/ff:1")
    got = where(validation.check_dataset(testing.dataset(cache=cache)))
    assert "is not a Kubernetes quantity" in got["dataset.cache.resources.cpu"]
    assert "is not a Kubernetes quantity" in got["dataset.cache.resources.memory"]
    # accepted once and ignored: the image is each cluster's agent's to choose
    assert "set worker_image in that cluster's agent" in got["dataset.cache.image"]
    for cpu, memory in (("-1", "-512Mi"), ("1\n", "1Gi\n")):  # the API server refuses them
        bad = CacheSpec(resources=Resources(cpu=cpu, memory=memory))
        got = where(validation.check_dataset(testing.dataset(cache=bad)))
        assert "is not a Kubernetes quantity" in got["dataset.cache.resources.cpu"]
        assert "is not a Kubernetes quantity" in got["dataset.cache.resources.memory"]
    for cpu, memory in (("500m", "512Mi"), ("2", "4Gi"), ("0.5", "1e9"), ("", ""), ("+1", "1")):
        ok = CacheSpec(resources=Resources(cpu=cpu, memory=memory))
        assert validation.check_dataset(testing.dataset(cache=ok)) == [], (cpu, memory)
    caps = Capabilities(fuse_device_resource="not a resource name!!")
    got = where(validation.check_cluster(testing.cluster("c1", capabilities=caps)))
    assert "domain/name" in got["cluster.capabilities.fuse_device_resource"]
    caps = Capabilities(fuse_device_resource="kubernetes.io/fuse")  # (Kubernetes' own)
    got = where(validation.check_cluster(testing.cluster("c1", capabilities=caps)))
    assert "under kubernetes.io/" in got["cluster.capabilities.fuse_device_resource"]
    caps = Capabilities(privileged=True, fuse_device_resource="smarter-devices/fuse")
    assert validation.check_cluster(testing.cluster("c1", capabilities=caps)) == []
    # a cluster whose every pod admission would refuse: no CSI and no privileged sidecar
    # (registered: `check_mountable`; the agent of one registered before runs, warned)
    for caps in (
        Capabilities(),
        Capabilities(csi=True),
        Capabilities(fluid=True),
        Capabilities(fuse_device_resource="smarter-devices/fuse"),  # (still privileged)
    ):
        unmountable = testing.cluster("c1", capabilities=caps)
        got = where(validation.check_mountable(unmountable))
        assert "could mount no dataset" in got["cluster.capabilities.privileged"], caps
        assert validation.check_cluster(unmountable) == []
        doc = Document(cluster=unmountable)
        assert where(validation.check_document(doc)) == got
        assert validation.check_document(doc, mountable=False) == []
    for caps in (Capabilities(csi=True, fluid=True), Capabilities(privileged=True)):
        assert validation.check_mountable(testing.cluster("c1", capabilities=caps)) == []
    got = where(validation.check_cluster(testing.cluster("c1", region="eu [/] west", zone="a")))
    assert set(got) == {"cluster.region"}
    agent = AgentConfig(cluster_file="c.toml", hub="https://h", sidecar_cpu="a lot")
    assert "quantity" in where(validation.check_agent(agent))["agent.sidecar_cpu"]


def test_mount_timeouts_are_durations() -> None:
    got = where(validation.check_dataset(ds(Mount(uri="s3://b/p", options={"timeout": "soon"}))))
    assert "duration" in got["dataset.mounts[0].options.timeout"]
    zero = ds(Mount(uri="s3://b/p", options={"connect_timeout": "0s"}))
    assert where(validation.check_dataset(zero)) == {
        "dataset.mounts[0].options.connect_timeout": "connect_timeout must be above zero"
    }
    assert validation.check_dataset(ds(Mount(uri="s3://b/p", options={"timeout": "45s"}))) == []


@pytest.mark.parametrize(
    "key", ["api_key", "private_key", "passphrase", "sk", "authorization", "pwd", "sas"]
)
def test_more_credential_option_names_are_refused(key: str) -> None:
    got = where(validation.check_dataset(ds(Mount(uri="s3://b/p", options={key: "x"}))))
    assert "looks like a credential" in got[f"dataset.mounts[0].options.{key}"]


def test_signed_urls_are_refused_and_their_query_never_printed() -> None:
    uri = "https://host.example/data?sig=SECRETSIG&X-Amz-Credential=AKIA"
    got = where(validation.check_dataset(ds(Mount(uri=uri))))
    assert "carries credentials" in got["dataset.mounts[0].uri"]
    assert "SECRETSIG" not in got["dataset.mounts[0].uri"]
    plain = "https://host.example/data?version=2"
    assert validation.check_dataset(ds(Mount(uri=plain))) == []


def test_a_spec_too_big_for_a_clusters_config_maps_is_refused_where_it_is_big() -> None:
    big = ds(
        Mount(uri="s3://b/p", name="b"),
        Mount(uri="s3://c/p", name="c", options={"note": "a" * 300_000}),
    )
    got = where(validation.check_dataset(big))
    assert list(got) == ["dataset.mounts[1]"]
    assert "above 256KiB" in got["dataset.mounts[1]"] and "1 MiB" in got["dataset.mounts[1]"]
    fits = ds(Mount(uri="s3://b/p", options={"note": "a" * 200_000}))
    assert validation.check_dataset(fits) == []


def test_a_password_beside_a_signed_query_is_not_shown_either() -> None:
    uri = "https://user:hunter2@host.example/data?X-Amz-Signature=abc"
    got = where(validation.check_dataset(ds(Mount(uri=uri))))["dataset.mounts[0].uri"]
    assert "hunter2" not in got and "abc" not in got and "carries credentials" in got


@pytest.mark.parametrize(
    "key",
    [
        "signature_version",
        "oauth_scope",
        "alluxio.security.authorization.permission.enabled",
        "enable_virtual_host_style",
        "tokenizer",
    ],
)
def test_settings_that_only_mention_auth_or_signature_are_not_credentials(key: str) -> None:
    assert validation.check_dataset(ds(Mount(uri="s3://b/p", options={key: "x"}))) == []


def test_other_query_parameters_and_small_cpu_units_pass() -> None:
    styled = ds(Mount(uri="https://img.example/a.jpg?x-oss-process=style/thumb&sv=2"))
    assert validation.check_dataset(styled) == []
    from fluidfed.models import Resources

    cache = CacheSpec(resources=Resources(cpu="250000n", memory="1Gi"))
    assert validation.check_dataset(testing.dataset(cache=cache)) == []


def test_the_agents_api_url_says_https_where_the_api_serves_it() -> None:
    def agent(**kw: str) -> AgentConfig:
        return AgentConfig(cluster_file="c.toml", hub="https://hub:8470", **kw)  # type: ignore[arg-type]

    assert validation.check_agent(agent()) == []
    pod = agent(api_host="0.0.0.0", api_url="https://fluidfed-agent.sys.svc:8471")
    assert validation.check_agent(pod) == []
    said = where(validation.check_agent(agent(api_host="0.0.0.0", api_url="http://a.svc:8471")))
    assert "serves HTTPS: write api_url with https://" in said["agent.api_url"]
    assert 'api_tls = "off"' in said["agent.api_url"]
    said = where(validation.check_agent(agent(api_tls="on", api_url="http://127.0.0.1:8471")))
    assert said == {"agent.api_url": 'api_tls = "on" serves HTTPS: write api_url with https://'}
    said = where(validation.check_agent(agent(api_url="agent:8471")))
    assert "must be an http(s) URL" in said["agent.api_url"]
    off = agent(api_host="0.0.0.0", api_tls="off", api_url="http://a:1")
    assert validation.check_agent(off) == []
    said = where(validation.check_agent(agent(api_tls="off", api_url="https://a:1")))
    assert "serves plain HTTP: write api_url with http://" in said["agent.api_url"]
    said = where(validation.check_agent(agent(api_host="0.0.0.0")))
    assert "listens on every address: give api_url" in said["agent.api_url"]
    assert validation.check_agent(agent(api_url="HTTPS://a.svc:1", api_host="::")) == []
    assert validation.is_loopback("127.0.0.2") and validation.is_loopback("::1")
    assert validation.is_loopback("localhost") and not validation.is_loopback("10.0.0.5")


@pytest.mark.parametrize(
    "uri",
    [
        # half of AWS's secret keys hold a '/': the parser then ends the host part there
        "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY@bucket/path",
        "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI?K7MDENG@bucket/path",
        "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI#K7MDENG@bucket/path",
        "https://u@[::1/p",
        "https://host.example/data?token=wJalrXUtnFEMI",
        "https://host.example/data?access_key=AKIAIOSFODNN7EXAMPLE&secret_key=wJalrXUtnFEMI",
    ],
)
def test_credentials_the_parser_does_not_see_as_a_user_are_refused_and_never_shown(
    uri: str,
) -> None:
    got = where(validation.check_dataset(ds(Mount(uri=uri))))["dataset.mounts[0].uri"]
    assert "carries credentials" in got
    assert "wJalrXUtnFEMI" not in got and "AKIAIOSFODNN7EXAMPLE" not in got
    assert "wJalrXUtnFEMI" not in validation.redacted(uri)


@pytest.mark.parametrize(
    ("uri", "said"),
    [
        ("http://host:abc/p", "the port after the host is not a number"),
        ("s3://bucket:notaport/p", "the port after the host is not a number"),
        ("http://:80/p", "names no host before its port"),
        ("http://h:99999/p", "out of range"),
        ("https://[::1/p", "Invalid IPv6 URL"),
    ],
)
def test_a_host_part_every_cluster_would_fail_on_is_refused_with_why(uri: str, said: str) -> None:
    got = where(validation.check_dataset(ds(Mount(uri=uri))))
    assert said in got["dataset.mounts[0].uri"]  # (not a traceback: ValueError was raised)


@pytest.mark.parametrize(
    "uri",
    [
        "http://host:9000/a@b",
        "s3://bucket/users/a@b.com/x",
        "https://[::1]:8443/p",
        "https://[fd00::1]/x",
        "file:///data/x",
    ],
)
def test_hosts_ports_and_at_signs_in_object_paths_pass(uri: str) -> None:
    assert validation.check_dataset(ds(Mount(uri=uri))) == []
    assert validation.redacted(uri) == uri


def test_option_values_that_are_urls_with_a_password_are_refused() -> None:
    for key, value in (
        ("bucket", "http://minioadmin:MinioSecret1@minio:9000/jfs"),
        ("metaurl", "redis://:RedisPass9@redis:6379/1"),
        ("proxy", "http://user:pa/ss@proxy:3128"),
    ):
        got = where(validation.check_dataset(ds(Mount(uri="s3://b/p", options={key: value}))))
        said = got[f"dataset.mounts[0].options.{key}"]
        assert "a URL with a user or password" in said and value not in said
    for endpoint, why in (
        ("http://minio:notaport", "not a number"),
        ("http://[fd00::1:9000", "IPv6"),
    ):
        got = where(
            validation.check_dataset(ds(Mount(uri="s3://b/p", options={"endpoint": endpoint})))
        )
        assert why in got["dataset.mounts[0].options.endpoint"]
    assert validation._authority_problem("nfs://server:/dir") == ""  # (NFS's own form)
    fine = {"endpoint": "http://minio:9000", "proxy": "http://proxy:3128"}
    assert validation.check_dataset(ds(Mount(uri="s3://b/p", options=fine))) == []


def test_a_dataset_name_fluid_refuses_is_refused_by_the_hub_not_by_a_running_copy() -> None:
    """Fluid's dataset controller takes DNS-1035 names only (a letter first): the hub
    refuses '2024-imagenet', with what to do, while a sidecar or worker given such a
    dataset before this rule still runs."""
    got = where(
        validation.check_dataset(Dataset(name="2024-imagenet", mounts=[Mount(uri="s3://b/p")]))
    )
    assert (
        "starts with a digit" in got["dataset.name"] and "ds-2024-imagenet" in got["dataset.name"]
    )
    old = Dataset(name="2024-imagenet", mounts=[Mount(uri="s3://b/p")])
    assert validation.check_dataset(old, new=False) == []
    assert validation.check_dataset(old, named=False) == []  # (the hub holds it: updatable)
    assert (
        validation.check_dataset(Dataset(name="imagenet-2024", mounts=[Mount(uri="s3://b/p")]))
        == []
    )


@pytest.mark.parametrize(
    ("engine", "most", "says"),
    [
        ("fluidfed", 53, "Helm takes 53"),
        ("thin", 53, "Helm takes 53"),
        ("alluxio", 45, "<dataset>-master"),
        ("jindo", 37, "<dataset>-jindofs-master"),
        ("juicefs", 45, "<dataset>-worker"),
        ("efc", 45, "<dataset>-master"),
    ],
)
def test_a_new_dataset_name_fits_what_its_engines_runtime_takes_on_clusters_with_fluid(
    engine: str, most: int, says: str
) -> None:
    """Fluid names its runtime's Helm release after the dataset (Helm takes 53), and the
    engines' charts a StatefulSet (52: its pods' controller-revision-hash label); a name
    the hub holds already can still be updated."""
    uri = {"juicefs": "juicefs:///d", "efc": "nfs://0a1b-x.cn-hangzhou.nas.aliyuncs.com:/d"}
    mount = Mount(
        uri=uri.get(engine, "s3://b/p"),
        name="jfs" if engine == "juicefs" else "",
        secret="s" if engine == "juicefs" else "",
        options={"bucket": "http://m/b", "storage": "minio"} if engine == "juicefs" else {},
    )
    cache = CacheSpec(engine=engine, profile="p" if engine == "thin" else "")  # type: ignore[arg-type]
    tiers = {"tiers": [cache.tiers[0]]} if engines.RULES[engine].one_tier else {}  # type: ignore[index]
    cache = msgspec.structs.replace(cache, **tiers)

    def ds(n: int) -> Dataset:
        return Dataset(name="d" * n, mounts=[mount], cache=cache)

    assert validation.check_dataset(ds(most)) == []
    got = where(validation.check_dataset(ds(most + 1)))
    assert f"is {most + 1} characters" in got["dataset.name"] and says in got["dataset.name"]
    assert validation.check_dataset(ds(most + 1), named=False) == []
    assert validation.check_dataset(ds(most + 1), new=False) == []


def test_a_sidecars_or_a_workers_copy_taken_before_fluids_rules_still_runs() -> None:
    """A binding's mounts as the hub took them before the rules Fluid's controllers hold
    (two mounts of one name, a Secret past ThinRuntime's volume name) still load in the
    sidecars and workers that read them themselves (`check_dataset(new=False)`)."""
    mounts = [
        Mount(uri="s3://b/p", name="a", path="/x", secret="s" * 48),
        Mount(uri="s3://b/q", name="a", path="/y", secret="s" * 48),
    ]
    old = Dataset(name="d", mounts=mounts)
    assert validation.check_dataset(old, new=False) == []
    assert {p.path for p in validation.check_dataset(old)} == {
        "dataset.mounts[0].secret",
        "dataset.mounts[1].secret",
        "dataset.mounts[1].name",
    }


def test_a_mount_at_the_root_is_a_datasets_only_mount() -> None:
    """Fluid's Alluxio skips a mount at / beside others: the tree would lack it there."""
    mounts = [Mount(uri="s3://b/p", name="a", path="/"), Mount(uri="s3://b/q", name="b")]
    got = where(validation.check_dataset(Dataset(name="d", mounts=mounts)))
    assert (
        "at the dataset's root" in got["dataset.mounts[0].path"]
        and "'/a'" in got["dataset.mounts[0].path"]
    )
    assert validation.check_dataset(Dataset(name="d", mounts=mounts), new=False) == []
    alone = Dataset(name="d", mounts=[Mount(uri="s3://b/p", path="/")])
    assert validation.check_dataset(alone) == []


def test_loop_intervals_of_zero_are_refused() -> None:
    """A loop that sleeps 0 between rounds spins a core (measured: 0.97 CPU-s per second)."""
    hub = HubConfig(bookmark_interval=Duration(0), autoscale_interval=Duration(0))
    got = where(validation.check_hub(hub))
    assert set(got) == {"hub.bookmark_interval", "hub.autoscale_interval"}
    agent = AgentConfig(
        cluster_file="c.toml", status_interval=Duration(0), resync_interval=Duration(0)
    )
    got = where(validation.check_agent(agent))
    assert set(got) == {"agent.status_interval", "agent.resync_interval"}


def test_an_infinite_autoscale_target_is_refused() -> None:
    policy = AutoscalePolicy(
        targets=[AutoscaleTarget(metric="read_throughput_per_worker", target=float("inf"))]
    )
    got = where(validation.check_autoscale(policy, "a"))
    assert "finite" in got["a.targets[0].target"]


def test_an_agents_hub_url_with_a_password_is_refused_without_it() -> None:
    agent = AgentConfig(cluster_file="c.toml", hub="https://u:pa/ss@hub.example:8470")
    got = where(validation.check_agent(agent))
    assert "carries credentials" in got["agent.hub"] and "pa/ss" not in got["agent.hub"]


def test_tiers_are_listed_fastest_first() -> None:
    """Blocks go into the first tier and move down as they are evicted: HDD before MEM
    would put new blocks on disk and move old ones into memory."""
    tiers = [
        CacheTier(medium="HDD", quota=ByteSize(2**30), path="/d"),
        CacheTier(medium="MEM", quota=ByteSize(2**30)),
    ]
    got = where(validation.check_dataset(testing.dataset(cache=CacheSpec(tiers=tiers))))
    assert "fastest first" in got["dataset.cache.tiers[1].medium"]
    ok = [tiers[1], CacheTier(medium="SSD", quota=ByteSize(2**30), path="/s"), tiers[0]]
    assert validation.check_dataset(testing.dataset(cache=CacheSpec(tiers=ok))) == []


def test_autoscale_stays_within_the_caches_own_replica_bounds() -> None:
    """cache.min_replicas/max_replicas bound the replicas whoever sets them: an autoscaler
    allowed past them would scale a dataset its owner capped."""
    targets = [AutoscaleTarget(metric="hit_ratio", target=0.9)]
    capped = CacheSpec(replicas=1, max_replicas=2)
    d = testing.dataset(cache=capped, autoscale=AutoscalePolicy(targets=targets, max_replicas=10))
    got = where(validation.check_dataset(d))
    assert "outside cache's bounds (0-2)" in got["dataset.autoscale.max_replicas"]
    floor = CacheSpec(replicas=2, min_replicas=2)
    d = testing.dataset(cache=floor, autoscale=AutoscalePolicy(targets=targets, min_replicas=1))
    assert "dataset.autoscale.min_replicas" in where(validation.check_dataset(d))
    d = testing.dataset(autoscale=AutoscalePolicy(targets=targets))  # (the defaults agree)
    assert validation.check_dataset(d) == []


def test_each_of_several_mounts_is_named_so_every_cluster_shows_one_tree() -> None:
    """Unnamed, one of several mounts was at the root for fluidfed's readers and at /m1 for
    Fluid's: refused by the hub, while a running copy of such a dataset still runs."""
    d = Dataset(name="ds", mounts=[Mount(uri="s3://b/a", name="train"), Mount(uri="s3://b/b")])
    got = where(validation.check_dataset(d))
    assert "needs a name or a path" in got["dataset.mounts[1].name"]
    assert validation.check_dataset(d, new=False) == []
    named = Dataset(
        name="ds", mounts=[Mount(uri="s3://b/a", name="train"), Mount(uri="s3://b/b", path="/val")]
    )
    assert validation.check_dataset(named) == []


def test_the_agents_webhook_and_images_are_checked_before_pods_meet_them() -> None:
    def said(**kw: Any) -> dict[str, str]:
        return where(validation.check_agent(AgentConfig(cluster_file="c.toml", **kw)))

    # the API server would call https://0.0.0.0/..., for which the certificate is not
    assert "give webhook_url" in said(webhook_host="0.0.0.0")["agent.webhook_url"]
    assert said(webhook_host="0.0.0.0", webhook_url="https://ff.ns.svc:8443/mutate") == {}
    for url, why in (
        ("http://x/mutate", "https:// only"),
        ("not a url", "https:// only"),
        ("https://h/m?x=1", "no query"),
        ("https://u:pw@h/m", "a user or password"),
        ("https:///mutate", "names no host"),
    ):
        got = said(webhook_url=url)["agent.webhook_url"]
        assert why in got and "pw" not in got, url
    assert said(webhook=False, webhook_host="0.0.0.0") == {}  # (no webhook: nothing to call)
    # the API server's client certificate: a name to require needs the CA that signs it
    named = said(webhook_client_name="kube-apiserver-webhook-client")
    assert "needs webhook_client_ca_file" in named["agent.webhook_client_ca_file"]
    assert said(webhook_client_name="apiserver", webhook_client_ca_file="/ca.crt") == {}
    for image in ("", " ", "Not A Valid:Image!", "ghcr.io/ff/ff:1 "):
        assert "not an image reference" in said(sidecar_image=image)["agent.sidecar_image"]
        assert "not an image reference" in said(worker_image=image)["agent.worker_image"]
    for image in ("fluidfed:dev", "127.0.0.1:5000/ff/ff:t", "ghcr.io/ff/ff@sha256:" + "a" * 64):
        assert said(sidecar_image=image) == {}
    # an hourly look renews a certificate: one that lapses sooner, or is renewed on every
    # look (a loop that spun), is refused
    short = said(webhook_cert_lifetime=Duration(600))
    assert "at least 1d" in short["agent.webhook_cert_lifetime"]
    # (the API's own certificate takes the same settings: checked without the webhook too)
    assert (
        "at least 1d"
        in said(webhook=False, webhook_cert_lifetime=Duration(600))["agent.webhook_cert_lifetime"]
    )
    for before in (0, 0.001, 86400 - 60, 40 * 86400):
        renew = said(webhook_cert_lifetime=Duration(86400), webhook_renew_before=Duration(before))
        assert "at most half" in renew["agent.webhook_renew_before"], before
    assert said(webhook_cert_lifetime=Duration(86400), webhook_renew_before=Duration(3600)) == {}
    for image in ("ff:dév", "a___b/c", "ff/a..b"):  # (the kubelet: InvalidImageName)
        assert "not an image reference" in said(worker_image=image)["agent.worker_image"]
    assert "names no host" in said(api_url="https://", api_host="0.0.0.0")["agent.api_url"]


@pytest.mark.parametrize(
    "uri", ["s3://b/p\n", " s3://b/p", "s3://b/p ", "s3://b/\tp", "s3://b\r/p"]
)
def test_a_uri_with_a_control_character_or_whitespace_at_an_end_is_refused(uri: str) -> None:
    """urlsplit drops them before it parses: every check passed, and Fluid's runtimes were
    handed the URI with them; a copy taken before still runs."""
    got = where(validation.check_dataset(Dataset(name="d", mounts=[Mount(uri=uri)])))
    assert "control character or whitespace" in got["dataset.mounts[0].uri"]
    old = Dataset(name="d", mounts=[Mount(uri=uri)])
    assert "dataset.mounts[0].uri" not in where(validation.check_dataset(old, new=False))
    inside = Dataset(name="d", mounts=[Mount(uri="s3://b/my data")])
    assert validation.check_dataset(inside) == []


@pytest.mark.parametrize(
    ("options", "at", "says"),
    [
        ({"enable_virtual_host_style": "maybe"}, ".enable_virtual_host_style", "invalid bool"),
        ({"batch_max_operations": "many"}, ".batch_max_operations", "ParseIntError"),
        ({"checksum_algorithm": "zzz"}, "", "not a supported checksum_algorithm"),
    ],
)
def test_reader_settings_opendal_cannot_parse_are_refused_at_apply(
    options: dict[str, str], at: str, says: str
) -> None:
    """The hub took them, and every sidecar and worker then failed to open the mount."""
    from fluidfed.data import ufs  # (the hub's and the CLI's check: OpenDAL parsing its config)

    d = Dataset(name="d", mounts=[Mount(uri="s3://b/p", options=options)])
    got = where(validation.check_dataset(d, options=ufs.options_problem))
    assert says in got[f"dataset.mounts[0].options{at}"]
    # a copy taken before still runs
    assert validation.check_dataset(d, new=False, options=ufs.options_problem) == []
    fine = {"enable_virtual_host_style": "true", "alluxio.underfs.s3.threads.max": "64"}
    ok = Dataset(name="d", mounts=[Mount(uri="s3://b/p", options=fine)])
    assert validation.check_dataset(ok, options=ufs.options_problem) == []


def test_the_reader_settings_check_does_no_io_for_a_file_mount(tmp_path: Path) -> None:
    """OpenDAL's fs service makes its root directory as it is built: the hub and the
    admin's machine made (or failed to make) node-local paths of a file:// mount."""
    from fluidfed.data import ufs

    root = tmp_path / "made-by-validation" / "deep"
    m = Mount(uri=f"file://{root}", options={"atomic_write_dir": str(tmp_path / "w")})
    assert ufs.options_problem(m) == ""
    assert not root.exists() and not (tmp_path / "w").exists()
