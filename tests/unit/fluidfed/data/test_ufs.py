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


def test_an_s3_error_document_is_cut_to_its_code_and_message() -> None:
    """obstore's text carries the answer's body; AWS's SignatureDoesNotMatch names the
    caller's access key id and the string signed, which no error message repeats."""
    raw = (
        "The operation lacked the necessary privileges to complete for path a.bin: Error "
        "performing GET https://s3.example/b/a.bin in 3ms - Server returned non-2xx status "
        'code: 403 Forbidden: <?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'
        "SignatureDoesNotMatch</Code><Message>The request signature we calculated does not "
        "match the signature you provided.</Message><AWSAccessKeyId>AKIAEXAMPLE123"
        "</AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256 20261202T000000Z</StringToSign>"
        "<SignatureProvided>0123abcd</SignatureProvided></Error>"
    )
    got = ufs._obstore_text(raw)
    assert got == (
        "The operation lacked the necessary privileges to complete for path a.bin: Error "
        "performing GET https://s3.example/b/a.bin in 3ms - Server returned non-2xx status "
        "code: 403 Forbidden: SignatureDoesNotMatch: The request signature we calculated "
        "does not match the signature you provided."
    )
    for secret in ("AKIAEXAMPLE123", "StringToSign", "0123abcd"):
        assert secret not in got
    # no document: the text as it came, on one line
    assert ufs._obstore_text("Generic error:\n  connection refused") == (
        "Generic error: connection refused"
    )
