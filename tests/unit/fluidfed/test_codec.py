"""JSON with fluidfed's value types, and msgspec's errors turned into problems with paths."""

from __future__ import annotations

import msgspec
import pytest

from devkit import testing
from fluidfed import codec
from fluidfed.models import AgentConfig, Dataset
from fluidfed.units import ByteSize, Duration


def problem(data: object, root: str = "dataset[2]") -> str:
    with pytest.raises(msgspec.ValidationError) as info:
        codec.convert(data, Dataset)
    return str(codec.problem_of(info.value, root, Dataset))


def test_sizes_and_durations_decode_from_text_and_encode_as_numbers() -> None:
    ds = codec.convert(
        {"name": "d", "mounts": [{"uri": "s3://b"}], "cache": {"block_size": "8MiB"}}, Dataset
    )
    assert ds.cache.block_size == 8 * 2**20 and isinstance(ds.cache.block_size, ByteSize)
    agent = codec.convert({"cluster_file": "c.toml", "heartbeat_interval": "1m30s"}, AgentConfig)
    assert agent.heartbeat_interval == 90.0 and isinstance(agent.heartbeat_interval, Duration)
    raw = codec.encode(agent)
    assert b'"heartbeat_interval":90.0' in raw
    assert codec.decoder(AgentConfig).decode(raw) == agent
    assert codec.to_builtins(testing.cache_tier("MEM", 2**30))["quota"] == 2**30


def test_unknown_keys_name_the_full_path() -> None:
    got = problem({"name": "d", "mounts": [{"uri": "x", "typo": 1}]})
    assert (
        got
        == "dataset[2].mounts[0].typo: unknown key 'typo': check its spelling against the documented keys"
    )


def test_missing_keys_inside_the_document_are_named() -> None:
    got = problem({"name": "d", "mounts": [{"name": "m"}]})
    assert got == "dataset[2].mounts[0].uri: required key 'uri' is missing"


def test_a_bad_choice_lists_the_allowed_values() -> None:
    got = problem(
        {"name": "d", "mounts": [{"uri": "x"}], "cache": {"tiers": [{"medium": "RAM", "quota": 1}]}}
    )
    assert (
        got
        == "dataset[2].cache.tiers[0].medium: Invalid enum value 'RAM': expected one of 'HDD', 'MEM', 'SSD'"
    )


def test_a_bad_value_keeps_the_parsers_message_at_its_path() -> None:
    got = problem({"name": "d", "mounts": [{"uri": "x"}], "cache": {"block_size": "lots"}}, root="")
    assert got.startswith("cache.block_size: expected a size such as 4GiB")
    assert (
        problem({"name": 5, "mounts": [{"uri": "x"}]})
        == "dataset[2].name: expected `str`, got `int`"
    )
