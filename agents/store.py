"""The agent's state as persisted and published: one state.json written one save at a
time, the statuses the hub has not heard yet, the retired bindings to finalize, and the
event that wakes the status reporter.

The changes themselves are pure functions over AgentState (tested without a disk or a
hub); Store applies them, saves, and wakes the reporter.
"""

from __future__ import annotations

import asyncio

import msgspec

from agents import trust
from agents.state import AgentState, StateFile
from fluidfed import codec
from fluidfed.data import credentials
from fluidfed.models import BindingStatus


def same_status(a: BindingStatus | None, b: BindingStatus) -> bool:
    """Equal but for the times of sending, which change on every report."""
    if a is None:
        return False
    strip = {"reported_at": 0.0, "hub_last_seen": 0.0}
    return msgspec.structs.replace(a, **strip) == msgspec.structs.replace(b, **strip)


def record_status(state: AgentState, name: str, st: BindingStatus) -> bool:
    """Keep `st` as the binding's status to send; False when nothing new."""
    if same_status(state.statuses.get(name), st):
        return False
    state.statuses[name] = st
    if name not in state.unsent:
        state.unsent.append(name)
    return True


def mark_sent(state: AgentState, name: str, sent: BindingStatus | None) -> bool:
    """The hub has `sent`; it is no longer unsent unless a newer status came meanwhile."""
    if state.statuses.get(name) is sent and name in state.unsent:
        state.unsent.remove(name)
        return True
    return False


def rotate_keys(
    state: AgentState, name: str, now: float, every: float, grace: float, *, force: bool = False
) -> bool:
    """Make or rotate binding `name`'s keys (`credentials.rotate`); True when they changed."""
    have = state.keys.get(name, [])
    got = credentials.rotate(have, now, every, grace, force=force)
    if got == have:
        return False
    state.keys[name] = got
    return True


def renew_tls(state: AgentState, name: str, now: float, *, force: bool = False) -> bool:
    """Make binding `name`'s TLS, or renew its serving certificate as due
    (`trust.data_tls`); True when it changed."""
    b = state.bindings.get(name)
    if b is None:
        return False
    have = state.tls.get(name)
    got = trust.data_tls(have, trust.worker_hosts(b), now, renew=force)
    if got is have:
        return False
    state.tls[name] = got
    return True


def keys_of_dataset(state: AgentState, dataset: str) -> list[bytes]:
    """Every key that signs for `dataset` here (its binding's, old ones in their grace)."""
    return [
        credentials.decode_key(e.key)
        for name, b in state.bindings.items()
        if b.dataset == dataset
        for e in state.keys.get(name, [])
    ]


def retire(state: AgentState, name: str, *, finalize: bool) -> bool:
    """A binding's objects are gone: drop its status and keys; True when it is newly to
    finalize."""
    state.statuses.pop(name, None)
    state.keys.pop(name, None)
    state.tls.pop(name, None)
    if name in state.unsent:
        state.unsent.remove(name)
    if finalize and name not in state.finalize:
        state.finalize.append(name)
        return True
    return False


def finalized(state: AgentState, name: str) -> None:
    """The hub has forgotten a retired binding: so does the agent."""
    state.finalize.remove(name)
    state.bindings.pop(name, None)
    state.statuses.pop(name, None)
    state.keys.pop(name, None)
    state.tls.pop(name, None)


class Store:
    def __init__(
        self, file: StateFile, state: AgentState, *, rotation: float = 0.0, grace: float = 300.0
    ) -> None:
        self.file = file
        self.state = state
        self.rotation = rotation  # seconds between key rotations (0: only when asked)
        self.grace = grace
        self.wake_reporter = asyncio.Event()
        self.hub_up = asyncio.Event()
        self._saving = asyncio.Lock()
        self.rotate_now: set[str] = set()  # bindings whose keys rotate at their next reconcile

    async def save(self) -> None:
        # encode here, where the state is not changing; write in a thread, one at a time
        data = codec.encode(self.state)
        async with self._saving:
            await asyncio.to_thread(self.file.write, data)

    async def publish(self, name: str, st: BindingStatus) -> None:
        if record_status(self.state, name, st):
            await self.save()
            self.wake_reporter.set()

    async def data_credentials(self, name: str, now: float) -> trust.DataCredentials:
        """Binding `name`'s keys, made or rotated as due (and saved before anything
        signed by a new key leaves the agent), the one that signs now, and its TLS (made or
        renewed as due, a rotation renewing the serving certificate too)."""
        force = name in self.rotate_now
        self.rotate_now.discard(name)
        keys = rotate_keys(self.state, name, now, self.rotation, self.grace, force=force)
        tls = renew_tls(self.state, name, now, force=force)
        if keys or tls:
            await self.save()
        return self.signing(name, now)

    def signing(self, name: str, now: float) -> trust.DataCredentials:
        """Binding `name`'s keys as they are (none if it has none yet)."""
        entries = self.state.keys.get(name, [])
        return trust.DataCredentials(
            keys=[credentials.decode_key(e.key) for e in entries],
            sign=credentials.signing(entries, now, self.grace),
            tls=self.state.tls.get(name),
        )

    def keys_of_dataset(self, dataset: str) -> list[bytes]:
        return keys_of_dataset(self.state, dataset)

    async def retire(self, name: str, *, finalize: bool) -> bool:
        newly = retire(self.state, name, finalize=finalize)
        await self.save()
        self.wake_reporter.set()
        return newly

    def heard_from_hub(self, now: float) -> None:
        self.state.hub_last_seen = now
        if not self.hub_up.is_set():
            self.hub_up.set()
            self.wake_reporter.set()

    def hub_lost(self) -> None:
        self.hub_up.clear()
