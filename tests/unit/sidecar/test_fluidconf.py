"""The sidecar's settings from the config.json Fluid writes for a ThinRuntime's FUSE
container."""

import json

import pytest

from fluidfed.errors import ConfigError
from fluidfed.models import CacheTier
from sidecar import fluidconf

DOC = {
    "mounts": [
        {
            "mountPoint": "s3://datasets/train",
            "name": "train",
            "options": {
                "endpoint": "http://minio:9000",
                "access-key": "/etc/fluid/secrets/s3-creds/access-key",
                "secret-key": "/etc/fluid/secrets/s3-creds/secret-key",
            },
        }
    ],
    "targetPath": "/runtime-mnt/thin/ml/imagenet/thin-fuse",
    "runtimeOptions": {
        "dataset": "imagenet",
        "block_size": "1048576",
        "cache_quota": "268435456",
        "workers_statefulset": "fluidfed-imagenet-cache",
        "workers_service": "fluidfed-imagenet-cache.ml.svc",
        "workers_replicas": "2",
    },
    "accessModes": ["ReadOnlyMany"],
}


def test_mounts_options_and_credential_files() -> None:
    fc = fluidconf.parse(json.dumps(DOC).encode(), "config.json")
    cfg, creds = fluidconf.sidecar_config(fc, "config.json")
    assert cfg.dataset == "imagenet" and cfg.block_size == 2**20
    (m,) = cfg.mounts
    assert (m.uri, m.name, m.options) == (
        "s3://datasets/train",
        "train",
        {"endpoint": "http://minio:9000"},
    )
    assert creds == {
        "AWS_ACCESS_KEY_ID": "/etc/fluid/secrets/s3-creds/access-key",
        "AWS_SECRET_ACCESS_KEY": "/etc/fluid/secrets/s3-creds/secret-key",
    }
    assert fluidconf.is_secret_file(creds["AWS_ACCESS_KEY_ID"])
    # a value passed as itself (THIN_FUSE_CONFIG_STORAGE=secret) may begin with "/": it is
    # the key, not a path to open (and to print in an error)
    assert not fluidconf.is_secret_file("/aBcD+eFgH/iJkL")
    assert not fluidconf.is_secret_file("/etc/fluid/secrets/../../../etc/shadow")
    assert cfg.cache == [CacheTier(medium="MEM", quota=2**28)]  # type: ignore[arg-type]
    assert cfg.workers.urls() == [
        "http://fluidfed-imagenet-cache-0.fluidfed-imagenet-cache.ml.svc:7070",
        "http://fluidfed-imagenet-cache-1.fluidfed-imagenet-cache.ml.svc:7070",
    ]
    assert cfg.short_circuit is False
    assert cfg.ca_file == ""


def test_workers_over_tls_and_their_ca() -> None:
    """What the agent's fluidfed engine hands a Fluid FUSE pod when its workers serve TLS
    (`agents.fluid.sidecar_options`)."""
    doc = json.loads(json.dumps(DOC))
    doc["runtimeOptions"] |= {
        "workers_scheme": "https",
        "ca_file": "/etc/fluidfed-credentials/imagenet/ca.crt",
    }
    cfg, _ = fluidconf.sidecar_config(fluidconf.parse(json.dumps(doc).encode(), "c.json"), "c.json")
    assert cfg.workers.urls()[0] == (
        "https://fluidfed-imagenet-cache-0.fluidfed-imagenet-cache.ml.svc:7070"
    )
    assert cfg.ca_file == "/etc/fluidfed-credentials/imagenet/ca.crt"


def test_the_dataset_name_falls_back_to_the_target_path() -> None:
    doc = {**DOC, "runtimeOptions": {}}
    cfg, _ = fluidconf.sidecar_config(fluidconf.parse(json.dumps(doc).encode(), "c"), "c")
    assert cfg.dataset == "imagenet" and cfg.workers.urls() == []


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        (b"{", "not JSON"),
        (b'{"mounts": 3}', "not the config.json of a Fluid ThinRuntime"),
        (json.dumps({**DOC, "mounts": []}).encode(), "has no mounts"),
        (
            json.dumps({**DOC, "runtimeOptions": {"block_size": "4M"}}).encode(),
            "spec.fuse.options.block_size",
        ),
    ],
)
def test_bad_configs_say_what_and_where(doc: bytes, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        fluidconf.sidecar_config(fluidconf.parse(doc, "/etc/fluid/config/config.json"), "c")
    assert says in str(err.value)
