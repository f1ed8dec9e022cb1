"""Data-path credentials: tokens, who may do what, key rotation, credential files."""

import base64
import json
import stat
from pathlib import Path

import pytest

from fluidfed.data import credentials
from fluidfed.data.credentials import Action, Claims, KeyEntry, Refused
from fluidfed.errors import ConfigError

KEY = b"k" * 32
OTHER = b"o" * 32
READER = Claims(role="reader", dataset="imagenet", namespace="research", sub_path="val")


def test_a_signed_token_verifies_with_its_key_and_gives_its_claims() -> None:
    token = credentials.sign(READER, KEY)
    assert token.startswith("ff1.")
    assert credentials.verify(token, [KEY]) == READER
    assert credentials.verify(token, [OTHER, KEY]) == READER  # any key of the list


def test_a_token_of_another_key_is_refused() -> None:
    with pytest.raises(Refused, match="not signed by this binding's key"):
        credentials.verify(credentials.sign(READER, OTHER), [KEY])


def test_altered_claims_are_refused() -> None:
    version, _, sig = credentials.sign(READER, KEY).split(".")
    forged = Claims(role="peer", dataset="imagenet")
    body = base64.urlsafe_b64encode(json.dumps({"role": "peer", "dataset": "imagenet"}).encode())
    tampered = f"{version}.{body.rstrip(b'=').decode()}.{sig}"
    assert credentials.peek(tampered) == forged
    with pytest.raises(Refused):
        credentials.verify(tampered, [KEY])


@pytest.mark.parametrize("token", ["", "abc", "ff1.x.y", "ff2.e30.e30", "ff1.e30"])
def test_malformed_tokens_are_refused_without_echoing_them(token: str) -> None:
    with pytest.raises(Refused) as info:
        credentials.verify(token, [KEY])
    assert token not in info.value.reason or not token


def test_an_expired_token_is_refused_and_one_still_valid_passes() -> None:
    token = credentials.sign(Claims(role="peer", dataset="d", expires=100.0), KEY)
    assert credentials.verify(token, [KEY], now=99.0).role == "peer"
    with pytest.raises(Refused, match="expired"):
        credentials.verify(token, [KEY], now=100.0)


def test_the_bearer_header_is_required() -> None:
    with pytest.raises(Refused, match="missing Authorization"):
        credentials.bearer(None)
    with pytest.raises(Refused, match="not a Bearer"):
        credentials.bearer("Basic abc")
    assert credentials.bearer("Bearer t") == "t"


@pytest.mark.parametrize(
    ("role", "action", "allowed"),
    [
        ("reader", Action.READ_BLOCK, True),
        ("reader", Action.TOUCH, True),
        ("reader", Action.WRITE_BLOCK, False),
        ("reader", Action.DRAIN, False),
        ("reader", Action.LOAD, False),
        ("reader", Action.REGISTER, False),
        ("reader", Action.METRICS, True),
        ("peer", Action.WRITE_BLOCK, True),
        ("peer", Action.READ_BLOCK, True),
        ("peer", Action.REGISTER, True),
        ("peer", Action.DRAIN, False),
        ("peer", Action.LOAD, False),
        ("agent", Action.DRAIN, True),
        ("agent", Action.LOAD, True),
        ("agent", Action.WRITE_BLOCK, False),
        ("agent", Action.REGISTER, False),
    ],
)
def test_roles(role: credentials.Role, action: Action, allowed: bool) -> None:
    why = credentials.authorize(Claims(role=role, dataset="d"), action, "d")
    assert (why is None) == allowed, why


def test_a_credential_counts_only_for_its_dataset() -> None:
    why = credentials.authorize(Claims(role="peer", dataset="a"), Action.WRITE_BLOCK, "b")
    assert why == "a credential of dataset 'a' does not count for 'b'"


@pytest.mark.parametrize(
    ("sub_path", "path", "allowed"),
    [
        ("val", "/val/x.bin", True),
        ("val", "/val", True),
        ("/val/", "/val/a/b", True),
        ("val", "/train/x.bin", False),
        ("val", "/valx/y", False),  # a sibling with the same prefix
        ("val", "/val/../train/x", False),  # normalised before the check
        ("", "/train/x.bin", True),
        ("/", "/anything", True),
    ],
)
def test_a_reader_reads_only_under_its_sub_path(sub_path: str, path: str, allowed: bool) -> None:
    claims = Claims(role="reader", dataset="d", namespace="n", sub_path=sub_path)
    why = credentials.authorize(claims, Action.READ_BLOCK, "d", path)
    assert (why is None) == allowed, why


def test_peers_and_the_agent_read_any_path() -> None:
    for role in ("peer", "agent"):
        claims = Claims(role=role, dataset="d", sub_path="val")
        assert credentials.authorize(claims, Action.READ_BLOCK, "d", "/train/x") is None


def test_rotation_keeps_the_old_key_through_the_grace_period_then_drops_it() -> None:
    grace, every = 60.0, 3600.0
    keys = credentials.rotate([], now=0.0, every=every, grace=grace)
    assert len(keys) == 1 and credentials.signing(keys, 0.0, grace) == 0
    first = keys[0]
    assert credentials.rotate(keys, now=100.0, every=every, grace=grace) == keys  # not due
    keys = credentials.rotate(keys, now=3600.0, every=every, grace=grace)
    assert len(keys) == 2 and keys[1] == first  # [new, old]
    # the new key is handed out first; the old one still signs until every holder has it
    assert credentials.signing(keys, 3600.0, grace) == 1
    assert credentials.signing(keys, 3660.0, grace) == 0
    # tokens signed by the old key still verify during the grace ...
    old_token = credentials.sign(READER, credentials.decode_key(first.key))
    held = [credentials.decode_key(k.key) for k in keys]
    assert credentials.verify(old_token, held) == READER
    assert credentials.rotate(keys, now=3700.0, every=every, grace=grace) == keys
    # ... and are refused once the old key is dropped
    keys = credentials.rotate(keys, now=3720.0, every=every, grace=grace)
    assert len(keys) == 1 and keys[0] != first
    with pytest.raises(Refused):
        credentials.verify(old_token, [credentials.decode_key(k.key) for k in keys])


def test_a_forced_rotation_adds_a_key_at_once() -> None:
    keys = [KeyEntry(credentials.encode_key(KEY), 0.0)]
    got = credentials.rotate(keys, now=10.0, every=0.0, grace=60.0, force=True)
    assert len(got) == 2 and got[1] == keys[0] and len(credentials.decode_key(got[0].key)) == 32


def test_the_verifier_remembers_tokens_until_the_keys_change() -> None:
    v = credentials.Verifier([KEY])
    header = "Bearer " + credentials.sign(READER, KEY)
    assert v.claims(header) == READER
    assert v.claims(header) == READER  # remembered
    v.set_keys([OTHER])
    with pytest.raises(Refused):
        v.claims(header)
    with pytest.raises(Refused, match="missing"):
        v.claims(None)


def test_the_verifier_forgets_an_expired_token() -> None:
    v = credentials.Verifier([KEY])
    header = "Bearer " + credentials.sign(Claims(role="peer", dataset="d", expires=1.0), KEY)
    with pytest.raises(Refused, match="expired"):
        v.claims(header)


def test_credential_files_are_written_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "c" / "credentials.json"
    creds = credentials.CredentialFile(keys=[credentials.encode_key(KEY)], sign=0)
    credentials.write_file(path, creds)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    got = credentials.load(path)
    assert got.keys == (KEY,)
    assert credentials.verify(got.signed(READER), [KEY]) == READER


def test_a_credential_file_without_token_or_keys_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text("{}")
    with pytest.raises(ConfigError, match="neither a token nor keys"):
        credentials.load(path)


def test_a_watched_credential_file_gives_the_new_one_once(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    credentials.write_file(path, credentials.CredentialFile(token="one"))
    w = credentials.Watched(path)
    assert w.current.token == "one" and w.changed() is None
    credentials.write_file(path, credentials.CredentialFile(token="two"))
    import os

    os.utime(path, (1e9, 1e9))  # a different mtime whatever the clock's resolution
    got = w.changed()
    assert got is not None and got.token == "two" and w.changed() is None
