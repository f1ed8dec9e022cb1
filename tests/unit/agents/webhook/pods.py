"""The bindings and pods the webhook tests start from, and a JSON patch applied the way
the API server applies it."""

import copy
import json
from typing import Any

from devkit import testing
from fluidfed.models import Access, Binding, Capabilities, MountMode

PRIV = Capabilities(privileged=True, native_sidecar=True)
LEGACY = Capabilities(privileged=True, native_sidecar=False)


def binding(name: str = "imagenet", mode: MountMode = "sidecar") -> Binding:
    access = [
        Access(namespace="ml", sub_path="train"),
        Access(namespace="research", sub_path="val", read_only=False),
    ]
    return testing.binding(testing.dataset(name, namespace="ml", access=access), mode=mode)


BINDINGS = {"imagenet": binding(), "coco": binding("coco"), "fluidds": binding("fluidds", "csi")}


def pod(
    *,
    volumes: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
    inject: bool = True,
    containers: list[dict[str, Any]] | None = None,
    init: list[dict[str, Any]] | None = None,
    security: dict[str, Any] | None = None,
) -> dict[str, Any]:
    p: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "train",
            "labels": {"fluidfed.io/inject": "true"} if inject else {"app": "x"},
        },
        "spec": {
            "containers": containers
            or [
                {
                    "name": "app",
                    "image": "app:1",
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": volumes
            if volumes is not None
            else [{"name": "data", "persistentVolumeClaim": {"claimName": "imagenet"}}],
        },
    }
    if annotations:
        p["metadata"]["annotations"] = annotations
    if init:
        p["spec"]["initContainers"] = init
    if security:
        p["spec"]["securityContext"] = security
    return p


def apply_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target = out
        for p in parts[:-1]:
            target = target[p]
        if op["op"] == "remove":
            del target[parts[-1]]
        else:
            target[parts[-1]] = op["value"]
    return out


def admission_review(uid: str, namespace: str, obj: dict[str, Any], **request: Any) -> bytes:
    """An AdmissionReview of `obj` as the API server sends it."""
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"kind": "Pod"},
                "namespace": namespace,
                **request,
                "object": obj,
            },
        }
    ).encode()
