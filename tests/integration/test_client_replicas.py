"""The SDK's failover between hub replicas, against servers on loopback: a call the hub may
have taken before its answer was lost goes to the next replica only if doing it twice is
harmless; one that never reached a replica always goes on."""

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from devkit.local.cluster import free_port
from fluidfed import Client
from fluidfed.errors import HubUnreachable

pytestmark = pytest.mark.integration


@pytest.fixture
async def dropping() -> AsyncIterator[str]:
    """A replica that takes the request and dies before it answers (the connection drops)."""

    async def take_and_drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(take_and_drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()
    await server.wait_closed()


@pytest.fixture
async def answering() -> AsyncIterator[tuple[str, list[str]]]:
    """A replica that answers every call with an empty list; the calls it got."""
    calls: list[str] = []

    async def empty(request: web.Request) -> web.Response:
        calls.append(f"{request.method} {request.path}")
        return web.json_response([])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", empty)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", calls
    await runner.cleanup()


async def test_a_post_whose_answer_was_lost_is_not_sent_again(
    dropping: str, answering: tuple[str, list[str]]
) -> None:
    url, calls = answering
    async with Client([dropping, url], "t", timeout=5) as client:
        with pytest.raises(HubUnreachable, match="may have been applied"):
            await client.heartbeat("c")  # the first replica may have taken it
        assert calls == []
        assert client.url == url  # the next call goes to the other replica
        assert await client.list_datasets() == []
        assert calls == ["GET /api/v1/datasets"]


async def test_a_keyed_post_whose_answer_was_lost_goes_to_the_next_replica(
    dropping: str, answering: tuple[str, list[str]]
) -> None:
    """A load carries an idempotency key the hubs deduplicate: sending it again is safe."""
    url, calls = answering
    async with Client([dropping, url], "t", timeout=5) as client:
        assert await client.load_dataset("d") == []
    assert calls == ["POST /api/v1/datasets/d/load"]


async def test_a_read_whose_answer_was_lost_goes_to_the_next_replica(
    dropping: str, answering: tuple[str, list[str]]
) -> None:
    url, calls = answering
    async with Client([dropping, url], "t", timeout=5) as client:
        assert await client.list_datasets() == []
    assert calls == ["GET /api/v1/datasets"]


async def test_a_post_no_replica_took_goes_to_the_next(answering: tuple[str, list[str]]) -> None:
    url, calls = answering
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with Client([refused, url], "t", timeout=5) as client:
        assert await client.load_dataset("d") == []
    assert calls == ["POST /api/v1/datasets/d/load"]
