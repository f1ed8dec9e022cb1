"""The async Python SDK of the hub's API; the CLI and the agents are built on it.

    async with fluidfed.Client("http://127.0.0.1:8470", token) as hub:
        await hub.apply_dataset(dataset)
        async for event in hub.watch_bindings("edge-1", revision=0):
            ...

Every transport error is translated at one place (`_request`) into fluidfed's errors:
`HubUnreachable` (temporary), `ServerError` (temporary), or a 4xx `APIError` subclass.

With several replicas, a call goes on to the next one only where that is safe (`retryable`):
always when it never reached a hub (the connection was refused); when it did and its answer
was lost (a broken connection, a timeout, a 503), only if repeating it changes nothing - an
idempotent method, or a request carrying an `Idempotency-Key` the hub deduplicates. A POST
whose answer was lost may have been applied: it is not sent again, and the error says so.
"""

from __future__ import annotations

import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import msgspec

from fluidfed import codec, names, tls, validation
from fluidfed.errors import (
    ConfigError,
    Gone,
    HubUnreachable,
    Problem,
    ServerError,
    api_error,
)
from fluidfed.models import (
    Binding,
    BindingStatus,
    Cluster,
    ClusterRecord,
    Dataset,
    DatasetView,
    ErrorBody,
    ListResult,
    Registered,
    WatchEvent,
)

T = TypeVar("T")

# methods that change nothing more when repeated (RFC 9110, 9.2.2)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# one watch event is one line carrying a binding with its dataset's spec: room for the
# largest body a hub takes (max_body, 1 MiB by default) many times over; aiohttp's own
# line limit (512 KiB) broke the watch of every binding of a cluster on one big spec
WATCH_LINE_MAX = 16 * 2**20


class NotSent(HubUnreachable):
    """The request never reached a hub (no connection): safe to send anywhere."""


def retryable(method: str, err: Exception, *, keyed: bool = False) -> bool:
    """May a request that failed with `err` be sent again to another replica?

    Yes when it never reached a hub. When it did and the answer is lost (`HubUnreachable`
    after sending, or a 503 the replica gave), only when repeating it is harmless: an
    idempotent method, or `keyed` (an idempotency key the hub deduplicates). Any other
    answer is the hub's: not retried."""
    if isinstance(err, NotSent):
        return True
    lost = isinstance(err, HubUnreachable) or (isinstance(err, ServerError) and err.status == 503)
    return lost and (method.upper() in IDEMPOTENT or keyed)


_errbody = codec.decoder(ErrorBody)
_event_dec = codec.decoder(WatchEvent)
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def _named(kind: str, name: str) -> str:
    """The API path of `kind` (cluster, dataset, binding) `name`: names as the hub gives
    them (DNS labels; a binding's, two joined by a dot), else ConfigError, before anything
    is sent. A name is put into the path as it is, so one like '../clusters/edge' or
    'imagenet?x' would reach another route or another object (a DELETE included)."""
    if len(name) <= 253 and validation.is_dns_subdomain(name):
        return f"/api/v1/{kind}s/{name}"
    raise ConfigError.one(
        f"{kind} name {name!r} is not a name the hub gives: use lowercase letters, digits, "
        f"'-' and '.' (e.g. 'imagenet-train'); `fluidfed get {kind}s` lists them",
        path=kind,
    )


def _decode(raw: bytes, typ: Any) -> Any:
    dec = _decoders.get(typ)
    if dec is None:
        dec = _decoders[typ] = codec.decoder(typ)
    return dec.decode(raw)


class Client:
    """The hub's API as async methods, one per route; use it as `async with`.

    `url` is the hub's base URL (`https://hub.example:8470`), or the URLs of several hub
    replicas (a list, or separated by commas): a replica that cannot be reached or answers
    503 is left for the next, and a watch resumes on the next at the same revision; `token`
    the admin token or a cluster's token. Over https the hub's certificate is always
    verified: against `ca_file` (PEM) if given, else the system's trust store;
    `cert_file`/`key_file` present a client certificate where the hub asks for one (mutual
    TLS). A `session` of the caller's is used as it is (its own TLS settings), with the
    token sent on every request.
    Errors are `fluidfed.errors`: `HubUnreachable` and `ServerError` are temporary.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        token: str,
        *,
        timeout: float = 30.0,
        session: aiohttp.ClientSession | None = None,
        ca_file: str = "",
        cert_file: str = "",
        key_file: str = "",
    ) -> None:
        given = url.split(",") if isinstance(url, str) else list(url)
        self.urls = [u.strip().rstrip("/") for u in given if u.strip()]
        if not self.urls:
            raise ConfigError.one("no hub URL given: give the hub's URL", path="hub")
        schemes = {u.split("://", 1)[0] for u in self.urls}
        if len(schemes) > 1:
            raise ConfigError.one(
                f"the hub URLs {', '.join(self.urls)} mix http and https: give the replicas' "
                "URLs with one scheme",
                path="hub",
            )
        self._at = 0  # the replica in use
        self.token = token
        self.timeout = timeout
        self._session = session
        self._own_session = session is None
        self._ssl: ssl.SSLContext | bool = True
        wanted = tls.ClientTLS(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
        if self.url.startswith("https://"):
            self._ssl = tls.client_context(wanted)
        elif wanted != tls.ClientTLS():
            raise ConfigError.one(
                f"TLS settings (CA or client certificate) were given but the hub URL "
                f"{self.url} is not https://: use the hub's https:// URL",
                path="hub",
            )

    @property
    def url(self) -> str:
        """The base URL of the hub replica in use."""
        return self.urls[self._at]

    def _next_replica(self) -> None:
        self._at = (self._at + 1) % len(self.urls)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ssl=self._ssl)
            )
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        idempotency_key: str = "",
    ) -> bytes:
        """One call, on the next replica while one cannot be reached, or answers 503 or
        loses the answer where sending it again is safe (`retryable`; each tried once)."""
        data = codec.encode(body) if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if idempotency_key:
            headers[names.IDEMPOTENCY_KEY] = idempotency_key
        for attempt in range(len(self.urls)):
            try:
                return await self._once(method, path, data, params, headers)
            except (HubUnreachable, ServerError) as err:
                if isinstance(err, ServerError) and err.status != 503:
                    raise  # the hub's answer
                self._next_replica()  # away or in doubt: the next call starts on the next
                if attempt == len(self.urls) - 1:
                    raise
                if not retryable(method, err, keyed=bool(idempotency_key)):
                    raise HubUnreachable(
                        f"{err}; the {method} {path} may have been applied there, so it was "
                        "not sent to another replica: look whether it took effect, then "
                        "repeat it if need be"
                    ) from err
        raise AssertionError("unreachable")  # for mypy: the loop returns or raises

    async def _once(
        self,
        method: str,
        path: str,
        data: bytes | None,
        params: dict[str, str] | None,
        headers: dict[str, str],
    ) -> bytes:
        with self._translated(f"cannot reach the hub at {self.url}"):
            async with self.session.request(
                method,
                self.url + path,
                data=data,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise _error_of(resp.status, raw)
                return raw
        raise AssertionError("unreachable")  # for mypy: the block returns or raises

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        """aiohttp's errors as fluidfed's: the one place transport errors are mapped."""
        try:
            yield
        except aiohttp.ClientConnectorCertificateError as err:
            raise ConfigError.one(
                _untrusted(self.url, err.certificate_error), path="ca_file"
            ) from err
        except aiohttp.ClientConnectorError as err:  # no connection: nothing was sent
            raise NotSent(f"{what}: {err}{_scheme_hint(self.url, err)}") from err
        except (TimeoutError, aiohttp.ClientError) as err:
            raise HubUnreachable(f"{what}: {err}{_scheme_hint(self.url, err)}") from err

    # --- clusters ------------------------------------------------------------------------

    async def register_cluster(self, spec: Cluster, *, rotate_token: bool = False) -> Registered:
        params = {"rotate_token": "true"} if rotate_token else None
        # registered twice with a token rotation: the second token is the one in force
        raw = await self._request("POST", "/api/v1/clusters", body=spec, params=params)
        result: Registered = _decode(raw, Registered)
        return result

    async def list_clusters(self) -> list[ClusterRecord]:
        result: list[ClusterRecord] = _decode(
            await self._request("GET", "/api/v1/clusters"), list[ClusterRecord]
        )
        return result

    async def get_cluster(self, name: str) -> ClusterRecord:
        result: ClusterRecord = _decode(
            await self._request("GET", _named("cluster", name)), ClusterRecord
        )
        return result

    async def label_cluster(
        self, name: str, set_labels: dict[str, str], remove: list[str] | None = None
    ) -> ClusterRecord:
        raw = await self._request(
            "PATCH",
            _named("cluster", name) + "/labels",
            body={"set": set_labels, "remove": remove or []},
        )
        result: ClusterRecord = _decode(raw, ClusterRecord)
        return result

    async def delete_cluster(self, name: str) -> None:
        await self._request("DELETE", _named("cluster", name))

    async def heartbeat(self, cluster: str) -> ClusterRecord:
        raw = await self._request("POST", _named("cluster", cluster) + "/heartbeat")
        result: ClusterRecord = _decode(raw, ClusterRecord)
        return result

    # --- datasets ------------------------------------------------------------------------

    async def apply_dataset(self, spec: Dataset) -> DatasetView:
        raw = await self._request("PUT", _named("dataset", spec.name), body=spec)
        result: DatasetView = _decode(raw, DatasetView)
        return result

    async def list_datasets(self) -> list[DatasetView]:
        result: list[DatasetView] = _decode(
            await self._request("GET", "/api/v1/datasets"), list[DatasetView]
        )
        return result

    async def get_dataset(self, name: str) -> DatasetView:
        result: DatasetView = _decode(
            await self._request("GET", _named("dataset", name)), DatasetView
        )
        return result

    async def load_dataset(
        self,
        name: str,
        clusters: list[str] | None = None,
        path: str = "",
        *,
        schedule: str = "",
        on_change: bool = False,
    ) -> list[Binding]:
        """Ask for a warm-up of the dataset's caches (again on a cron `schedule`, or
        whenever the under storage changed); the bindings that carry the request."""
        body: dict[str, Any] = {"clusters": clusters or [], "path": path}
        if schedule:
            body["schedule"] = schedule
        if on_change:
            body["on_change"] = True
        # one key for this ask, on every replica it is sent to: the hub makes it one load
        raw = await self._request(
            "POST",
            _named("dataset", name) + "/load",
            body=body,
            idempotency_key=uuid.uuid4().hex,
        )
        result: list[Binding] = _decode(raw, list[Binding])
        return result

    async def delete_dataset(self, name: str) -> None:
        await self._request("DELETE", _named("dataset", name))

    # --- bindings ------------------------------------------------------------------------

    async def list_bindings(self, cluster: str | None = None) -> ListResult:
        params = {"cluster": cluster} if cluster else None
        result: ListResult = _decode(
            await self._request("GET", "/api/v1/bindings", params=params), ListResult
        )
        return result

    async def get_binding(self, name: str) -> Binding:
        result: Binding = _decode(await self._request("GET", _named("binding", name)), Binding)
        return result

    async def finalize_binding(self, binding: str) -> None:
        """Tell the hub that a retired binding's objects are gone, so it can forget it."""
        await self._request("DELETE", _named("binding", binding))

    async def report_status(self, binding: str, status: BindingStatus) -> None:
        await self._request("PUT", _named("binding", binding) + "/status", body=status)

    async def watch_bindings(
        self, cluster: str | None = None, *, revision: int | None = None
    ) -> AsyncIterator[WatchEvent]:
        """Binding events after `revision`, BOOKMARKs included, until the stream ends.

        Raises Gone when `revision` is compacted: list again, then watch from the list's
        revision. The caller keeps the revision of the last event it handled to resume.
        """
        params: dict[str, str] = {"watch": "true"}
        if cluster:
            params["cluster"] = cluster
        if revision is not None:
            params["revision"] = str(revision)
        for attempt in range(len(self.urls)):
            streaming = False
            try:
                with self._translated(f"watch on {self.url} broke"):
                    async with self.session.get(
                        self.url + "/api/v1/bindings",
                        params=params,
                        headers={"Authorization": f"Bearer {self.token}"},
                        timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout),
                    ) as resp:
                        if resp.status >= 400:
                            raise _error_of(resp.status, await resp.read())
                        streaming = True
                        while line := await resp.content.readuntil(b"\n", max_size=WATCH_LINE_MAX):
                            if not line.strip():
                                continue
                            event: WatchEvent = _event_dec.decode(line)
                            if event.type == "ERROR":
                                raise Gone(event.error or "watch ended by the hub")
                            yield event
                return
            except (HubUnreachable, ServerError) as err:
                # the next watch, or the next try now, goes to the next replica: the caller
                # resumes there from the revision of the last event it handled
                self._next_replica()
                if streaming or attempt == len(self.urls) - 1:
                    raise
                if isinstance(err, ServerError) and err.status != 503:
                    raise


def _error_of(status: int, raw: bytes) -> Exception:
    try:
        body = _errbody.decode(raw)
    except msgspec.DecodeError:
        return api_error(status, raw.decode(errors="replace")[:200] or f"HTTP {status}")
    problems = [
        Problem(
            message=str(p.get("message", "")),
            path=str(p.get("path", "")),
            file=str(p.get("file", "")),
            line=int(p.get("line", 0) or 0),
        )
        for p in body.problems
    ]
    return api_error(status, body.error, problems)


# OpenSSL's verify codes (x509_vfy.h) that call for other advice than "give the CA"
_EXPIRED, _NOT_YET_VALID, _WRONG_HOST = 10, 9, (62, 64)  # 62: a name, 64: an IP address


def _untrusted(url: str, cert_error: Exception) -> str:
    """Why the hub's certificate was refused, and what to do about it."""
    code = getattr(cert_error, "verify_code", 0)
    if code == _EXPIRED:
        return (
            f"the hub at {url} presented a certificate that has expired ({cert_error}): "
            "renew the hub's certificate (or check this machine's clock)"
        )
    if code == _NOT_YET_VALID:
        return (
            f"the hub at {url} presented a certificate not valid yet ({cert_error}): check "
            "the clocks of this machine and the one that issued it"
        )
    if code in _WRONG_HOST:
        return (
            f"the hub's certificate is not for the host in {url} ({cert_error}): use a name "
            "the certificate was issued for, or issue one for this name"
        )
    return (
        f"the hub at {url} presented a certificate this client does not trust "
        f"({cert_error}): give the CA that signed it (--cacert, FLUIDFED_CA_FILE, or ca_file "
        "in the client or agent configuration)"
    )


def _scheme_hint(url: str, err: BaseException) -> str:
    """The likely cause when the URL's scheme is not what the hub speaks."""
    text = str(err)
    if url.startswith("https://") and "WRONG_VERSION_NUMBER" in text:
        return f" (the hub there speaks plain HTTP: use {'http://' + url[8:]})"
    if url.startswith("http://") and isinstance(err, aiohttp.ServerDisconnectedError):
        return f" (if the hub serves HTTPS, use {'https://' + url[7:]})"
    return ""
