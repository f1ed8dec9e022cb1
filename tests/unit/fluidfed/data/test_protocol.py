"""The cache-worker protocol: block queries on the wire, JSON messages both ends share."""

from __future__ import annotations

import json

import pytest

from devkit import testing
from fluidfed.data import protocol
from fluidfed.errors import ConfigError


def _as_query(params: dict[str, str | int]) -> dict[str, str]:
    """What a server sees: every value a string."""
    return {k: str(v) for k, v in params.items()}


def test_a_block_query_round_trips_with_the_short_names_on_the_wire() -> None:
    q = protocol.BlockQuery(
        mount=1, key="train/a.bin", size=9000, index=2, version="e1", span=protocol.Span(5, 70)
    )
    params = q.params()
    assert params == {"m": 1, "p": "train/a.bin", "s": 9000, "i": 2, "v": "e1", "r": "5-70"}
    assert protocol.BlockQuery.from_query(_as_query(params)) == q


def test_a_block_query_sends_flags_only_when_set() -> None:
    plain = protocol.BlockQuery(mount=0, key="k", size=1, index=0)
    assert plain.params() == {"m": 0, "p": "k", "s": 1, "i": 0}  # an older worker: no flags
    local = protocol.BlockQuery(mount=0, key="k", size=1, index=0, local=True)
    assert local.params()["local"] == "1"
    verify = protocol.BlockQuery(mount=0, key="k", size=1, index=0, verify=True)
    assert verify.params()["verify"] == "1"
    run = protocol.BlockQuery(mount=0, key="k", size=1, index=0, run=protocol.MAX_RUN)
    assert run.params()["n"] == protocol.MAX_RUN
    more = {"m": "0", "p": "k", "s": "1", "i": "0", "n": str(protocol.MAX_RUN + 5)}
    assert protocol.BlockQuery.from_query(more).run == protocol.MAX_RUN  # (a newer sidecar's)
    joined = protocol.BlockQuery(mount=0, key="k", size=1, index=0, run=2, joined=True)
    assert joined.params()["j"] == "1"
    for q in (plain, local, verify, run, joined):
        assert protocol.BlockQuery.from_query(_as_query(q.params())) == q


def test_the_parts_of_a_joined_answer_round_trip_and_bad_ones_are_refused() -> None:
    parts = [protocol.Part(4096, 7, True), protocol.Part(5, 0, False)]
    header = protocol.parts_header(parts)
    assert header == "4096/7/hit,5/0/miss"
    assert protocol.parse_parts(header, 4096) == parts
    assert (
        protocol.parse_parts("", 4096) == [] == protocol.parse_parts(protocol.parts_header([]), 1)
    )
    for bad in (
        "4096/7/hit,5/0",  # a field missing
        "4097/7/hit",  # longer than a block
        "0/7/hit",  # empty
        "4/-1/hit",  # no CRC
        "4/x/hit",
        "4/7/cached",
        ",",
        ",".join(["4/7/hit"] * (protocol.MAX_RUN + 1)),  # more than a run
    ):
        with pytest.raises(ValueError, match=protocol.PARTS):
            protocol.parse_parts(bad, 4096)


def test_a_block_query_from_an_older_sidecar_decodes() -> None:
    got = protocol.BlockQuery.from_query(
        {"m": "0", "p": "x", "v": "", "s": "10", "i": "1", "verify": "1", "new": "ignored"}
    )
    assert (got.mount, got.key, got.size, got.index, got.verify, got.span) == (
        0,
        "x",
        10,
        1,
        True,
        None,
    )


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"m": "zero", "p": "x", "s": "1", "i": "0"}, "m"),
        ({"m": "0", "s": "1", "i": "0"}, "p"),
        ({"m": "0", "p": "x", "i": "0"}, "s"),
        ({"m": "0", "p": "x", "s": "1", "i": "-"}, "i"),
        ({"m": "0", "p": "x", "s": "1", "i": "0", "r": "12"}, "r"),
        ({"m": "0", "p": "x", "s": "1", "i": "0", "r": "1-x"}, "r"),
        ({"m": "0", "p": "x", "s": "1", "i": "0", "n": "-1"}, "n"),
        ({"m": "0", "p": "x", "s": "1", "i": "0", "n": "two"}, "n"),
        # an object path that would leave its mount, or the place a reader is checked at
        ({"m": "0", "p": "a/../../b", "s": "1", "i": "0"}, "p"),
        ({"m": "0", "p": "..", "s": "1", "i": "0"}, "p"),
        ({"m": "0", "p": "/../x", "s": "1", "i": "0"}, "p"),
    ],
)
def test_a_bad_block_query_names_the_parameter_and_the_shape(
    query: dict[str, str], param: str
) -> None:
    with pytest.raises(ConfigError) as info:
        protocol.BlockQuery.from_query(query)
    [problem] = info.value.problems
    assert f": {param}: " in problem.message
    assert protocol.BlockQuery.SHAPE in problem.message


def test_object_paths_a_listing_gives_are_taken_as_they_are() -> None:
    # (an HTTP mount's manifest may give '/train/a.bin' or './val/b.bin')
    for key in ("a//b", "a..b/c", ".hidden/x", "x/...", "dir/", "/train/a.bin", "./val/b.bin"):
        q = protocol.BlockQuery.from_query({"m": "0", "p": key, "s": "1", "i": "0"})
        assert q.key == key


def test_the_block_key_is_the_one_the_sidecar_computes() -> None:
    from fluidfed.data.layout import FileRef

    ref = FileRef(mount=1, key="a", size=10, version="v")
    q = protocol.BlockQuery(mount=1, key="a", size=10, index=3, version="v")
    assert q.block_key("ds", 4) == ref.block_key("ds", 4, 3)


STATUS = testing.WORKER_STATUS_WIRE


def test_a_status_encodes_every_field_zeros_too() -> None:
    got = protocol.decode(protocol.WorkerStatus, json.dumps(STATUS).encode())
    back = json.loads(protocol.encode(got))
    assert back["corrupt"] == 0 and back["served"]["short_circuit"] == 0
    assert back["load"] == {**STATUS["load"], "errors": 0, "message": "", "ufs_bytes": 0}
    assert {k: v for k, v in back.items() if k != "load"} == {
        k: v for k, v in STATUS.items() if k != "load"
    }


def test_a_registration_from_a_newer_worker_with_unknown_fields_decodes() -> None:
    status = {**STATUS, "tiers": [{**STATUS["tiers"][0], "temperature": 3}], "gpu": True}
    body = {"dataset": "train", "url": "http://w", "status": status, "zone": "a"}
    reg = protocol.decode(protocol.WorkerRegistration, json.dumps(body).encode())
    assert reg.status.used == 300
    assert reg.status.tiers[0].medium == "MEM"


def test_a_status_field_renamed_on_one_side_is_refused_by_name() -> None:
    renamed = {k: v for k, v in STATUS.items() if k != "used"} | {"used_bytes": 300}
    body = {"dataset": "train", "url": "http://w", "status": renamed}
    with pytest.raises(ConfigError) as info:
        protocol.decode(protocol.WorkerRegistration, json.dumps(body).encode())
    assert "status.used" in str(info.value)
    assert protocol.WorkerRegistration.SHAPE in str(info.value)


@pytest.mark.parametrize(
    ("typ", "body", "where"),
    [
        (protocol.Touched, b'{"blocks": "not a list"}', "blocks"),
        (protocol.Touched, b'{"blocks": [["k", "long"]]}', "blocks[0][1]"),
        (protocol.LoadRequest, b'{"path": 3}', "path"),
        (protocol.DrainRequest, b"[1, 2]", "got `array`"),
        (protocol.WorkerRegistration, b"not json", "not JSON"),
    ],
)
def test_a_malformed_body_names_the_expected_shape(
    typ: type[protocol.Message], body: bytes, where: str
) -> None:
    with pytest.raises(ConfigError) as info:
        protocol.decode(typ, body)
    assert typ.SHAPE in str(info.value)
    assert where in str(info.value)


def test_requests_default_what_an_older_client_leaves_out() -> None:
    assert protocol.decode(protocol.LoadRequest, b"{}") == protocol.LoadRequest()
    assert protocol.decode(protocol.DrainRequest, b"{}").peers == []
    assert protocol.decode(protocol.LoadProgress, b'{"state": "running"}').done == 0


def test_routes_and_urls() -> None:
    assert protocol.block_url("http://w:7070", "ab") == "http://w:7070/v1/blocks/ab"
