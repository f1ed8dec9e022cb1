"""The SDK's replicas: several hub URLs, one scheme, one in use at a time; a request goes
on to the next replica only where sending it again is safe (real HTTP on loopback)."""

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec
import pytest
from aiohttp import web

from devkit import testing
from fluidfed import Client, client, names
from fluidfed.errors import ConfigError, HubUnreachable, NotFound, ServerError


def test_several_hub_urls_as_a_list_or_separated_by_commas() -> None:
    by_commas = Client("http://a:8470/, http://b:8470", "t")
    assert by_commas.urls == ["http://a:8470", "http://b:8470"]
    assert by_commas.url == "http://a:8470"
    assert Client(["http://a:8470", "http://b:8470"], "t").urls == by_commas.urls
    assert Client("http://a:8470", "t").urls == ["http://a:8470"]


def test_hub_urls_that_mix_schemes_or_name_none_are_refused() -> None:
    with pytest.raises(ConfigError, match="mix http and https"):
        Client("http://a:8470,https://b:8470", "t")
    with pytest.raises(ConfigError, match="no hub URL"):
        Client(" , ", "t")


# --- failover: only what is safe to send again --------------------------------------------


def test_what_may_be_sent_to_another_replica() -> None:
    never_sent = client.NotSent("connection refused")
    lost = HubUnreachable("server disconnected")
    busy = ServerError("store unavailable", status=503)
    for method in ("GET", "PUT", "DELETE", "POST", "PATCH"):
        assert client.retryable(method, never_sent)  # it reached no hub: anywhere
    for method in ("GET", "HEAD", "PUT", "DELETE"):
        assert client.retryable(method, lost) and client.retryable(method, busy)
    for method in ("POST", "PATCH"):  # may have been applied: again only with a key
        assert not client.retryable(method, lost) and not client.retryable(method, busy)
        assert client.retryable(method, lost, keyed=True)
        assert client.retryable(method, busy, keyed=True)
    # the hub's own answers are final
    assert not client.retryable("GET", ServerError("bug", status=500))
    assert not client.retryable("GET", NotFound("no such dataset"))


@dataclass
class Seen:
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, key


@contextlib.asynccontextmanager
async def answer_lost(seen: Seen) -> AsyncIterator[str]:
    """A replica that reads each request whole, then drops the connection unanswered."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        fields = dict(x.split(": ", 1) for x in lines[1:] if ": " in x)
        await reader.readexactly(int(fields.get("Content-Length", 0)))
        method, path, _ = lines[0].split(" ", 2)
        seen.requests.append((method, path.split("?")[0], fields.get(names.IDEMPOTENCY_KEY, "")))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def answering(seen: Seen) -> AsyncIterator[str]:
    """A replica that answers every request with an empty JSON list."""

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        key = request.headers.get(names.IDEMPOTENCY_KEY, "")
        seen.requests.append((request.method, request.path, key))
        return web.json_response([])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with testing.serving(app) as url:
        yield url


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed


async def test_a_post_whose_answer_was_lost_is_not_sent_to_another_replica() -> None:
    lossy, good = Seen(), Seen()
    async with answer_lost(lossy) as a, answering(good) as b, Client([a, b], "t") as hub:
        with pytest.raises(HubUnreachable, match="may have been applied there"):
            await hub.heartbeat("edge")
        assert lossy.requests == [("POST", "/api/v1/clusters/edge/heartbeat", "")]
        assert good.requests == []
        assert hub.url == b  # the next call starts on the other replica


async def test_a_keyed_post_goes_on_to_the_next_replica_with_its_key() -> None:
    lossy, good = Seen(), Seen()
    async with answer_lost(lossy) as a, answering(good) as b, Client([a, b], "t") as hub:
        assert await hub.load_dataset("imagenet") == []
        ((_, path, key),) = lossy.requests
        assert path == "/api/v1/datasets/imagenet/load" and key
        assert good.requests == [("POST", path, key)]  # the same ask: the hub applies it once
        await hub.load_dataset("imagenet")
        assert good.requests[1][2] not in ("", key)  # a new ask has a new key


async def test_idempotent_requests_and_requests_never_sent_go_on() -> None:
    lossy, good = Seen(), Seen()
    async with answer_lost(lossy) as a, answering(good) as b, Client([a, b], "t") as hub:
        assert await hub.list_clusters() == []  # a GET whose answer was lost: again
        assert [r[0] for r in good.requests] == ["GET"]
    good = Seen()
    async with answering(good) as b, Client([closed_port(), b], "t") as hub:
        await hub.load_dataset("d")  # refused: it reached no hub, sent on ...
        with pytest.raises(msgspec.ValidationError):
            await hub.heartbeat("edge")  # ... as any POST is (the stand-in's [] is no record)
        assert [r[:2] for r in good.requests] == [
            ("POST", "/api/v1/datasets/d/load"),
            ("POST", "/api/v1/clusters/edge/heartbeat"),
        ]


async def test_a_name_that_is_not_one_the_hub_gives_is_refused_before_it_is_sent() -> None:
    """Names go into the API path as they are: '../clusters/edge' would reach the cluster
    route (a `delete dataset` deleting a cluster), 'imagenet?x' the dataset 'imagenet'."""
    seen = Seen()
    async with answering(seen) as url, Client(url, "t") as hub:
        for bad in ("../clusters/edge", "imagenet?x", "a/b", "..", "%2e%2e", "", "Imagenet", "x\n"):
            with pytest.raises(ConfigError, match="is not a name the hub gives") as info:
                await hub.delete_dataset(bad)
            assert "fluidfed get datasets" in str(info.value)
            with pytest.raises(ConfigError):
                await hub.delete_cluster(bad)
            with pytest.raises(ConfigError):
                await hub.finalize_binding(bad)
        assert seen.requests == []
        await hub.delete_dataset("imagenet-train")
        await hub.finalize_binding("imagenet-train.edge-1")
        assert seen.requests == [
            ("DELETE", "/api/v1/datasets/imagenet-train", ""),
            ("DELETE", "/api/v1/bindings/imagenet-train.edge-1", ""),
        ]
