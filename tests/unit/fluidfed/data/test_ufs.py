"""The under-storage errors as a user reads them (the readers themselves run against MinIO,
HTTP and a directory in tests/integration/test_ufs.py)."""

from fluidfed.data import ufs

REFUSED = """Unexpected (persistent) at list => send http request

Context:
   url: http://127.0.0.1:9000/datasets?list-type=2&prefix=imagenet/
   called: reqwest::send
   service: s3

Source:
   error sending request: client error (Connect): tcp connect error: Connection refused (os error 111)

Backtrace:
   0: <unknown>
"""


def test_an_unreachable_store_names_its_endpoint_and_the_cause() -> None:
    got = ufs.describe(REFUSED)
    assert got.startswith("tcp connect error: Connection refused (os error 111) at 127.0.0.1:9000")
    assert "Backtrace" not in got and "\n" not in got


def test_an_error_without_context_keeps_its_first_line() -> None:
    assert ufs.describe("PermissionDenied at read => forbidden\n\nmore") == (
        "PermissionDenied at read => forbidden"
    )
    assert ufs.describe("", "Timeout") == "Timeout"
