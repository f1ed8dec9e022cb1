"""AdmissionReview v1 on the wire, and the pure step from a review to its response."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import msgspec
import orjson

from agents.webhook.mutate import Decision


class Kind(msgspec.Struct):
    kind: str = ""


class Request(msgspec.Struct, rename="camel"):
    uid: str
    kind: Kind = msgspec.field(default_factory=Kind)
    namespace: str = ""
    operation: str = ""
    object: dict[str, Any] | None = None


class Review(msgspec.Struct, rename="camel"):
    api_version: str = ""
    kind: str = ""
    request: Request | None = None


_decoder = msgspec.json.Decoder(Review)


def respond(uid: str, decision: Decision) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": decision.allowed}
    if decision.allowed and decision.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(decision.patch)).decode()
    if not decision.allowed:
        response["status"] = {"code": 403, "reason": "Forbidden", "message": decision.message}
    elif decision.message:
        response["warnings"] = [decision.message]
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def handle(
    body: bytes, decide: Callable[[dict[str, Any], str], Decision]
) -> tuple[int, dict[str, Any]]:
    """HTTP status and AdmissionReview for a request body. Never raises on bad input."""
    try:
        review = _decoder.decode(body)
    except msgspec.DecodeError as err:
        return 400, _error("", f"not an AdmissionReview: {err}")
    if review.request is None or review.kind != "AdmissionReview":
        return 400, _error("", "not an AdmissionReview v1 request (kind and request are required)")
    req = review.request
    if req.kind.kind != "Pod" or req.object is None:
        # not ours to judge (the configuration sends pods only): let it through unchanged
        return 200, respond(req.uid, Decision(allowed=True))
    namespace = req.namespace or (req.object.get("metadata") or {}).get("namespace", "")
    return 200, respond(req.uid, decide(req.object, namespace))


def _error(uid: str, message: str) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": uid,
            "allowed": False,
            "status": {"code": 400, "reason": "BadRequest", "message": message},
        },
    }
