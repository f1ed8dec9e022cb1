"""The error tree: HTTP statuses mapped to types callers catch by meaning, what is
temporary, and messages that say where the problem is."""

from __future__ import annotations

import pytest

from fluidfed import errors
from fluidfed.errors import Problem


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.BadRequest),
        (413, errors.BadRequest),
        (422, errors.BadRequest),
        (401, errors.Unauthorized),
        (403, errors.Forbidden),
        (404, errors.NotFound),
        (409, errors.Conflict),
        (410, errors.Gone),
        (500, errors.ServerError),
        (503, errors.ServerError),
    ],
)
def test_each_status_has_its_type(status: int, cls: type[errors.APIError]) -> None:
    err = errors.api_error(status, "why")
    assert type(err) is cls
    assert err.status == status and err.reason == "why"
    assert isinstance(err, errors.FluidfedError)


def test_an_unknown_4xx_is_a_plain_api_error_and_only_5xx_is_temporary() -> None:
    odd = errors.api_error(418, "teapot")
    assert type(odd) is errors.APIError
    assert not odd.temporary
    assert errors.api_error(502, "bad gateway").temporary
    assert not any(errors.api_error(s, "").temporary for s in (400, 401, 403, 404, 409, 410))
    assert errors.HubUnreachable("refused").temporary
    assert not errors.ConfigError([]).temporary


def test_problems_say_file_line_and_path() -> None:
    assert (
        str(Problem("bad", path="dataset.name", file="d.toml", line=3))
        == "d.toml:3: dataset.name: bad"
    )
    assert str(Problem("bad", line=3)) == "line 3: bad"
    assert str(Problem("bad", file="d.toml")) == "d.toml: bad"
    assert str(Problem("bad")) == "bad"


def test_errors_list_every_problem() -> None:
    probs = [Problem("one", path="a"), Problem("two", path="b")]
    assert str(errors.ConfigError(probs)) == "a: one\nb: two"
    err = errors.api_error(422, "invalid dataset", probs)
    assert str(err) == "hub answered 422: invalid dataset\n  a: one\n  b: two"
    assert err.problems == probs
    assert errors.api_error(404, "no such dataset").problems == []
