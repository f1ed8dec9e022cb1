"""AdmissionReview in and out: the response around a mutation, and errors for malformed reviews."""

import base64
import json

import pytest

from agents.webhook import mutate as m
from agents.webhook import review
from tests.unit.agents.webhook.pods import BINDINGS, PRIV, admission_review, apply_patch, pod


def test_admission_review_round_trip() -> None:
    body = admission_review("u1", "ml", pod(), operation="CREATE")
    status, resp = review.handle(body, lambda p, ns: m.mutate(p, ns, BINDINGS, PRIV))
    assert status == 200
    r = resp["response"]
    assert r["uid"] == "u1" and r["allowed"] is True and r["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(r["patch"]))
    assert apply_patch(pod(), ops)["spec"]["initContainers"][0]["name"] == "fluidfed-imagenet"


def test_denied_review_carries_the_message() -> None:
    body = admission_review("u2", "finance", pod())
    _, resp = review.handle(body, lambda p, ns: m.mutate(p, ns, BINDINGS, PRIV))
    assert resp["response"]["allowed"] is False
    assert resp["response"]["status"]["code"] == 403
    assert "namespace 'finance'" in resp["response"]["status"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[]",
        b'{"kind": "AdmissionReview"}',
        b'{"kind": "Other", "request": {"uid": "x"}}',
        b'{"kind": "AdmissionReview", "request": {"uid": 5}}',
    ],
)
def test_malformed_reviews_get_an_error_response(body: bytes) -> None:
    status, resp = review.handle(body, lambda p, ns: m.mutate(p, ns, BINDINGS, PRIV))
    assert status == 400
    assert resp["response"]["allowed"] is False
    assert resp["response"]["status"]["code"] == 400
