"""Each Fluid engine's mount as it reads it, and what each refuses: tables, no I/O."""

from typing import Any

import pytest

from devkit import testing
from fluidfed import engines, errors, validation
from fluidfed.data import ufs
from fluidfed.models import CacheSpec, Engine, Mount

S3 = Mount(
    uri="s3://bucket/data",
    name="train",
    options={"endpoint": "http://minio:9000", "region": "eu-1", "timeout": "5s"},
    secret="s3-creds",
)
OSS = Mount(uri="oss://bucket/data", options={"endpoint": "https://oss.example"}, secret="oss")
JFS = Mount(
    uri="juicefs:///demo",
    name="jfs-demo",  # the JuiceFS volume's name
    options={"bucket": "http://minio:9000/jfs", "storage": "minio"},
    secret="jfs-secret",
)
NAS = Mount(uri="nfs://0a1b2c-xyz.cn-hangzhou.nas.aliyuncs.com:/train")


def ref(name: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": S3.secret, "key": key}}}


@pytest.mark.parametrize(
    ("engine", "mount", "expected"),
    [
        (
            "fluidfed",  # the sidecar reads the options as the catalog holds them
            S3,
            {
                "mountPoint": "s3://bucket/data",
                "name": "train",
                "options": {"endpoint": "http://minio:9000", "region": "eu-1", "timeout": "5s"},
                "encryptOptions": [
                    ref("access-key", "access-key"),
                    ref("secret-key", "secret-key"),
                ],
            },
        ),
        (
            "alluxio",
            S3,
            {
                "mountPoint": "s3://bucket/data",
                "name": "train",
                "options": {
                    "alluxio.underfs.s3.disable.dns.buckets": "true",
                    "alluxio.underfs.s3.inherit.acl": "false",
                    "alluxio.underfs.s3.endpoint": "http://minio:9000",
                    "alluxio.underfs.s3.region": "eu-1",
                },
                "encryptOptions": [
                    ref("aws.accessKeyId", "access-key"),
                    ref("aws.secretKey", "secret-key"),
                ],
            },
        ),
        (
            "jindo",
            S3,
            {
                "mountPoint": "s3://bucket/data",
                "name": "train",
                "options": {"fs.s3.endpoint": "http://minio:9000", "fs.s3.region": "eu-1"},
                "encryptOptions": [
                    ref("fs.s3.accessKeyId", "access-key"),
                    ref("fs.s3.accessKeySecret", "secret-key"),
                ],
            },
        ),
        (
            "thin",  # the cluster's own profile reads what the catalog says
            S3,
            {
                "mountPoint": "s3://bucket/data",
                "name": "train",
                "options": {"endpoint": "http://minio:9000", "region": "eu-1"},
                "encryptOptions": [
                    ref("access-key", "access-key"),
                    ref("secret-key", "secret-key"),
                ],
            },
        ),
    ],
)
def test_an_s3_mount_as_each_engine_reads_it(
    engine: Engine, mount: Mount, expected: dict[str, Any]
) -> None:
    assert engines.fluid_mount(engine, mount, 0) == expected


def test_oss_juicefs_nfs_and_local_paths() -> None:
    alluxio_oss = engines.fluid_mount("alluxio", OSS, 1)
    assert alluxio_oss["name"] == "m1"
    assert alluxio_oss["options"] == {"fs.oss.endpoint": "https://oss.example"}
    assert [e["name"] for e in alluxio_oss["encryptOptions"]] == [
        "fs.oss.accessKeyId",
        "fs.oss.accessKeySecret",
    ]
    jfs = engines.fluid_mount("juicefs", JFS, 0)
    assert jfs["mountPoint"] == "juicefs:///demo"
    assert jfs["options"] == {"bucket": "http://minio:9000/jfs", "storage": "minio"}
    assert [(e["name"], e["valueFrom"]["secretKeyRef"]["key"]) for e in jfs["encryptOptions"]] == [
        ("metaurl", "metaurl"),
        ("access-key", "access-key"),
        ("secret-key", "secret-key"),
    ]
    assert engines.fluid_mount("efc", NAS, 0) == {"mountPoint": NAS.uri, "name": "m0"}
    local = Mount(uri="file:///mnt/data", path="/local")
    assert engines.fluid_mount("alluxio", local, 0)["mountPoint"] == "local:///mnt/data"
    assert engines.fluid_mount("jindo", local, 0)["path"] == "/local"
    assert engines.fluid_mount("fluidfed", local, 0)["mountPoint"] == "file:///mnt/data"


def problems(engine: str, *mounts: Mount, **cache: Any) -> list[tuple[str, str]]:
    d = testing.dataset(
        "d",
        mounts=list(mounts),
        cache=CacheSpec(engine=engine, **cache),  # type: ignore[arg-type]
    )
    return [(p.path, p.message) for p in validation.check_dataset(d)]


@pytest.mark.parametrize(
    ("engine", "mounts", "cache", "path", "says"),
    [
        ("fluidfed", [NAS], {}, "dataset.mounts[0].uri", "Engines that serve nfs://: thin, efc"),
        ("fluidfed", [JFS], {}, "dataset.mounts[0].uri", "cannot serve juicefs://"),
        ("alluxio", [NAS], {}, "dataset.mounts[0].uri", "cannot serve nfs://"),
        ("juicefs", [S3], {}, "dataset.mounts[0].uri", "it serves juicefs://"),
        ("juicefs", [JFS, JFS], {}, "dataset.mounts[1]", "one storage per dataset"),
        (
            "juicefs",
            [JFS],
            {"tiers": [testing.cache_tier("MEM", 2**30), testing.cache_tier("SSD", 2**30, "/d")]},
            "dataset.cache.tiers[1]",
            "caches in one tier: Fluid gives it the first tier only",
        ),
        (
            "jindo",
            [S3],
            {"tiers": [testing.cache_tier("MEM", 2**30), testing.cache_tier("SSD", 2**30, "/d")]},
            "dataset.cache.tiers[1]",
            "engine jindo (JindoRuntime) caches in one tier",
        ),
        (
            "juicefs",
            [Mount(uri="juicefs:///d", options={"storage": "minio"}, secret="s")],
            {},
            "dataset.mounts[0].options.bucket",
            "JuiceFS needs option 'bucket'",
        ),
        (
            "juicefs",
            [Mount(uri="juicefs:///d", options={"bucket": "http://m/b", "storage": "minio"})],
            {},
            "dataset.mounts[0].secret",
            "metaurl",
        ),
        ("juicefs", [Mount(uri="juicefs://vol/d")], {}, "dataset.mounts[0].uri", "juicefs:///"),
        ("efc", [Mount(uri="nfs://nas.local:/x")], {}, "dataset.mounts[0].uri", "NAS only"),
        ("efc", [Mount(uri="nfs://server")], {}, "dataset.mounts[0].uri", "nfs://server:/dir"),
        (
            "efc",
            [Mount(uri=NAS.uri, secret="s")],
            {},
            "dataset.mounts[0].secret",
            "reads no credentials",
        ),
        ("jindo", [Mount(uri="oss://b/p")], {}, "dataset.mounts[0].options.endpoint", "OSS"),
        (
            "jindo",
            [Mount(uri="https://h/p")],
            {},
            "dataset.mounts[0].uri",
            "fluidfed, thin, alluxio",
        ),
        ("thin", [S3], {}, "dataset.cache.profile", "ThinRuntimeProfile"),
        ("alluxio", [S3], {"profile": "p"}, "dataset.cache.profile", "engine thin only"),
        (
            "fluidfed",
            [Mount(uri="dataset://other"), S3],
            {},
            "dataset.mounts",
            "only mount",
        ),
        (  # fluidfed's sidecar reads every mount with one Secret's keys
            "fluidfed",
            [Mount(uri="s3://a/p", secret="a"), Mount(uri="s3://b/p", name="b", secret="b")],
            {},
            "dataset.mounts[1].secret",
            "one Secret's keys",
        ),
        # Fluid's JuiceFSRuntime runs `juicefs format <metaurl> <mount name>`: JuiceFS
        # refuses names outside its rule, and renames a volume formatted before
        (
            "juicefs",
            [Mount(uri=JFS.uri, options=JFS.options, secret="s")],
            {},
            "dataset.mounts[0].name",
            "juicefs format",
        ),
        (
            "juicefs",
            [Mount(uri=JFS.uri, name="m0", options=JFS.options, secret="s")],
            {},
            "dataset.mounts[0].name",
            "not 'm0'",
        ),
        # ThinRuntime (the fluidfed engine's on clusters with Fluid) refuses two mounts of
        # one name; an unnamed mount i is m<i> in Fluid's Dataset
        (
            "fluidfed",
            [
                Mount(uri="s3://a/p", name="x", path="/a"),
                Mount(uri="s3://a/q", name="x", path="/b"),
            ],
            {},
            "dataset.mounts[1].name",
            "mounts[0] and mounts[1] are both named 'x'",
        ),
        (
            "alluxio",
            [Mount(uri="s3://a/p", path="/a"), Mount(uri="s3://a/q", name="m0")],
            {},
            "dataset.mounts[1].name",
            "an unnamed mount number i is m<i> there",
        ),
        # ThinRuntime mounts the Secret as the volume thin-fuseconfig-<secret>
        (
            "fluidfed",
            [Mount(uri="s3://a/p", secret="s" * 48)],
            {},
            "dataset.mounts[0].secret",
            "at most 47",
        ),
        # EFCRuntime matches the URI as written: lower case, a ':' after the server
        (
            "efc",
            [Mount(uri="nfs://0A1B2C-xyz.cn-hangzhou.nas.aliyuncs.com:/train")],
            {},
            "dataset.mounts[0].uri",
            "written in lower case",
        ),
        (
            "efc",
            [Mount(uri="nfs://0a1b2c-xyz.cn-hangzhou.nas.aliyuncs.com/train")],
            {},
            "dataset.mounts[0].uri",
            "NAS only",
        ),
    ],
)
def test_an_engine_refuses_what_it_cannot_serve_with_the_field_path(
    engine: str, mounts: list[Mount], cache: dict[str, Any], path: str, says: str
) -> None:
    got = problems(engine, *mounts, **cache)
    assert any(p == path and says in m for p, m in got), got


@pytest.mark.parametrize(
    ("engine", "mount", "cache"),
    [
        ("fluidfed", S3, {}),
        ("alluxio", S3, {}),
        ("alluxio", OSS, {}),
        ("alluxio", Mount(uri="https://mirror.example/spark/"), {}),
        ("jindo", OSS, {}),
        ("juicefs", JFS, {}),
        ("efc", NAS, {}),
        ("thin", NAS, {"profile": "nfs-profile"}),
        ("alluxio", Mount(uri="dataset://other"), {}),  # a reference: Fluid's own
    ],
)
def test_what_each_engine_serves_passes(engine: str, mount: Mount, cache: dict[str, Any]) -> None:
    assert problems(engine, mount, **cache) == []


def test_fluids_rules_leave_what_they_do_not_concern() -> None:
    # a Secret name up to 47 on ThinRuntime, any on the engines without its volume; two
    # mounts named apart; a JuiceFS volume name of 3
    assert problems("fluidfed", Mount(uri="s3://a/p", secret="s" * 47)) == []
    assert problems("alluxio", Mount(uri="s3://a/p", secret="s" * 63)) == []
    two = [Mount(uri="s3://a/p", path="/a"), Mount(uri="s3://a/q", name="m2")]
    assert problems("fluidfed", *two) == []
    jfs = Mount(uri=JFS.uri, name="jfs", options=JFS.options, secret="s")
    assert problems("juicefs", jfs) == []


@pytest.mark.parametrize("path", ["train", "train/", "/train/../x", "//a//b"])
def test_a_mounts_path_is_absolute_and_normalised_as_fluid_reads_it(path: str) -> None:
    # (Alluxio and Jindo put a relative path at /<name>; ThinRuntime compares them as
    # written): refused for new specs, so Fluid's Dataset gets it as every reader shows it
    got = problems("alluxio", Mount(uri="s3://b/p", name="n", path=path))
    assert [p for p, _ in got] == ["dataset.mounts[0].path"] and "is not absolute" in got[0][1]
    m = Mount(uri="s3://b/p", name="n", path=path)
    assert validation.check_dataset(testing.dataset("d", mounts=[m]), new=False) == []
    assert engines.fluid_mount("alluxio", m, 0)["path"] == path  # (a stored one: as it was)
    # a lone mount without a path is written without one (Alluxio shows it at /<name>; a
    # path written for it would move a running runtime's files)
    assert "path" not in engines.fluid_mount("alluxio", Mount(uri="s3://b/p"), 0)


def test_alluxio_reads_each_mount_with_its_own_secret() -> None:
    two = [Mount(uri="s3://a/p", name="a", secret="a"), Mount(uri="s3://b/p", name="b", secret="b")]
    assert problems("alluxio", *two) == []


def test_every_engine_names_a_runtime_and_the_schemes_it_serves() -> None:
    assert {e: r.kind for e, r in engines.RULES.items()} == {
        "fluidfed": "ThinRuntime",
        "thin": "ThinRuntime",
        "alluxio": "AlluxioRuntime",
        "jindo": "JindoRuntime",
        "juicefs": "JuiceFSRuntime",
        "efc": "EFCRuntime",
    }
    assert engines.engines_serving("juicefs") == ["juicefs"]


@pytest.mark.parametrize("scheme", engines.RULES["fluidfed"].schemes)
def test_every_scheme_the_fluidfed_engine_accepts_has_a_reader_in_the_sidecar(
    scheme: str,
) -> None:
    # what the hub accepts for fluidfed's engine must open in the cluster (no I/O: OpenDAL
    # connects on first use)
    uri = "file:///data" if scheme == "file" else f"{scheme}://bucket/p"
    assert ufs.open_ufs(Mount(uri=uri), env={}) is not None


@pytest.mark.parametrize("uri", ["nfs://nas.local:/x", "juicefs:///d", "dataset://other"])
def test_schemes_the_fluidfed_engine_refuses_have_no_reader_either(uri: str) -> None:
    scheme = uri.split(":")[0]
    assert scheme not in engines.RULES["fluidfed"].schemes
    with pytest.raises(errors.UFSError, match="no reader for"):
        ufs.open_ufs(Mount(uri=uri), env={})
