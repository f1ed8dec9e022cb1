"""TOML loading: every error names file, line, field path and what is expected."""

from pathlib import Path

import pytest

from fluidfed import config
from fluidfed.cli.main import main
from fluidfed.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[3] / "configs"

DATASET = """\
[dataset]
name = "imagenet"

[[dataset.mounts]]
uri = "s3://bucket/imagenet"

[dataset.cache]
replicas = 2

[[dataset.cache.tiers]]
medium = "MEM"
quota = "4GiB"

[[dataset.cache.tiers]]
medium = "SSD"
quota = "100GiB"
path = "/cache"
"""


def problems(source: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.loads(source, file="ds.toml")
    return [str(p) for p in info.value.problems]


def test_every_example_config_is_valid() -> None:
    from fluidfed.data.layout import SidecarConfig, WorkerConfig

    files = sorted(CONFIGS.rglob("*.toml"))
    assert len(files) >= 5
    data_path: dict[str, type[SidecarConfig | WorkerConfig]] = {
        "sidecar.toml": SidecarConfig,
        "worker.toml": WorkerConfig,
    }
    for f in files:
        if f.name in data_path:
            config.load_file(f, data_path[f.name])  # the sidecar's and worker's own files
        else:
            config.load(f)


def test_good_dataset_decodes_sizes() -> None:
    doc = config.loads(DATASET)
    (ds,) = doc.dataset
    assert ds.cache.tiers[1].quota == 100 * 2**30
    assert ds.cache.replicas == 2
    assert ds.cache.block_size == 4 * 2**20


def test_malformed_toml_names_the_line() -> None:
    (p,) = problems(DATASET.replace("replicas = 2", "replicas = = 2"))
    assert p.startswith("ds.toml:8:")
    assert "not valid TOML" in p


def test_unknown_key_names_file_line_and_path() -> None:
    (p,) = problems(DATASET.replace('path = "/cache"', 'path = "/cache"\nqouta = 1'))
    assert p.startswith("ds.toml:18: dataset.cache.tiers[1].qouta: unknown key 'qouta'")


def test_wrong_type_names_the_field() -> None:
    (p,) = problems(DATASET.replace("replicas = 2", 'replicas = "two"'))
    assert p.startswith("ds.toml:8: dataset.cache.replicas: expected `int`")


def test_bad_size_says_what_a_size_looks_like() -> None:
    (p,) = problems(DATASET.replace('quota = "100GiB"', 'quota = "lots"'))
    assert p.startswith("ds.toml:16: dataset.cache.tiers[1].quota:")
    assert "4GiB" in p


def test_missing_required_key() -> None:
    (p,) = problems(DATASET.replace('uri = "s3://bucket/imagenet"', 'name = "m"'))
    assert "dataset.mounts[0].uri: required key 'uri' is missing" in p


def test_every_rule_problem_is_reported_not_only_the_first() -> None:
    src = (
        DATASET.replace('name = "imagenet"', 'name = "ImageNet"').replace(
            'path = "/cache"', 'path = "cache"'
        )
        + '\n[dataset.placement]\nselector = { match_expressions = [{ key = "env", operator = "In" }] }\n'
    )
    found = problems(src)
    assert any("dataset.name" in p and "not a valid name" in p for p in found)
    assert any("dataset.cache.tiers[1].path: path must be absolute" in p for p in found)
    assert any(
        "dataset.placement.selector.match_expressions[0].values" in p and "needs at least one" in p
        for p in found
    )
    assert all(p.startswith("ds.toml:") for p in found)


def test_bad_selector_operator_is_a_type_error_with_path() -> None:
    src = (
        DATASET
        + '\n[dataset.placement]\nselector = { match_expressions = [{ key = "env", operator = "Like", values = ["a"] }] }\n'
    )
    (p,) = problems(src)
    assert "dataset.placement.selector.match_expressions[0].operator" in p
    assert "'In'" in p  # says what is expected


def test_bad_label_key_in_selector() -> None:
    src = DATASET + '\n[dataset.placement]\nselector = { match_labels = { "bad key!" = "x" } }\n'
    (p,) = problems(src)
    assert "dataset.placement.selector.match_labels.bad key!" in p


def test_array_of_datasets_paths_are_indexed() -> None:
    src = DATASET.replace("[dataset]", "[[dataset]]") + (
        '\n[[dataset]]\nname = "two"\n[[dataset.mounts]]\nuri = "ftp://x"\n'
    )
    (p,) = problems(src)
    assert p.startswith("ds.toml:22: dataset[1].mounts[0].uri:")
    assert "s3://" in p


def test_credentials_in_options_are_refused() -> None:
    src = DATASET.replace(
        'uri = "s3://bucket/imagenet"',
        'uri = "s3://bucket/imagenet"\noptions = { secret_key = "abc" }',
    )
    (p,) = problems(src)
    assert "Kubernetes Secret" in p


def test_cluster_needs_kube_access_choice() -> None:
    src = '[cluster]\nname = "c1"\n[cluster.kubernetes]\nin_cluster = true\nkubeconfig = "/k"\n'
    (p,) = problems(src + "[cluster.capabilities]\nprivileged = true\n")
    assert p.startswith("ds.toml:3: cluster.kubernetes:")


def test_a_cluster_that_could_mount_no_dataset_is_refused_where_it_says_so() -> None:
    """Without Fluid's CSI plugin a cluster's pods get the FUSE sidecar, which runs only
    privileged: a cluster that has neither is refused, not accepted to have every pod
    refused at admission later."""
    src = '[cluster]\nname = "c1"\n[cluster.kubernetes]\nin_cluster = true\n'
    (p,) = problems(src)  # (the defaults: no CSI, not privileged)
    assert p.startswith(
        "ds.toml:1: cluster.capabilities.privileged: this cluster could mount no dataset"
    )
    assert "set privileged = true" in p and "csi = true and fluid = true" in p
    (p,) = problems(src + "[cluster.capabilities]\ncsi = true\n")  # (CSI, but no Fluid)
    assert p.startswith("ds.toml:5: cluster.capabilities.privileged:")
    (p,) = problems(src + "[cluster.capabilities]\nprivileged = false\n")
    assert p.startswith("ds.toml:6: cluster.capabilities.privileged:")  # (the key's line)
    for caps in ("privileged = true", "csi = true\nfluid = true"):
        doc = config.loads(src + f"[cluster.capabilities]\n{caps}\n", file="ds.toml")
        assert doc.cluster is not None and doc.cluster.name == "c1"
    # an agent's own cluster file, registered before the rule: loaded (the agent warns)
    doc = config.loads(src, file="ds.toml", mountable=False)
    assert doc.cluster is not None and doc.cluster.name == "c1"


def test_validate_command_prints_every_error_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.toml"
    good.write_text(DATASET)
    bad1 = tmp_path / "bad1.toml"
    bad1.write_text(DATASET.replace("replicas = 2", "replicas = -1"))
    bad2 = tmp_path / "bad2.toml"
    bad2.write_text("[cluster\n")
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(good), str(bad1), str(bad2)]) == 2
    err = capsys.readouterr().err
    assert f"{bad1}:8: dataset.cache.replicas" in err
    assert f"{bad2}:1:" in err


def test_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "/nonexistent/x.toml"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_data_path_configs_load_and_bad_ones_say_where(tmp_path: Path) -> None:
    from fluidfed.data.layout import SidecarConfig, WorkerConfig

    side = config.load_file(CONFIGS / "sidecar.toml", SidecarConfig)
    assert side.workers.urls() == ["http://127.0.0.1:7070"]
    worker = config.load_file(CONFIGS / "worker.toml", WorkerConfig)
    assert [t.medium for t in worker.tiers] == ["MEM", "SSD"]
    bad = tmp_path / "worker.toml"
    bad.write_text(
        'dataset = "x"\n[[mounts]]\nuri = "file:///d"\n[[tiers]]\nmedium = "RAM"\nquota = "1GiB"\n'
    )
    with pytest.raises(ConfigError) as info:
        config.load_file(bad, WorkerConfig)
    (p,) = info.value.problems
    assert p.file == str(bad) and p.line == 5 and p.path == "tiers[0].medium"
    with pytest.raises(ConfigError, match="no such file"):
        config.load_file(tmp_path / "missing.json", WorkerConfig)


def test_nesting_past_the_parsers_bound_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError) as info:
        config.load(str(deep))
    (p,) = info.value.problems
    assert p.file == str(deep) and "nested more than" in p.message
