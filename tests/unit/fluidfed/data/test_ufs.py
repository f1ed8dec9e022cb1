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


def test_a_ranged_answer_is_taken_only_when_it_is_the_range_asked_for() -> None:
    body = memoryview(b"x" * 100)
    # a 206 of the range, or of its part up to the object's end
    assert ufs.ranged_body(206, "bytes 1000-1099/5000", body, 1000, 100) is body
    assert ufs.ranged_body(206, "bytes 1000-1099/1100", body, 1000, 4096) is body
    assert ufs.ranged_body(206, " bytes 1000-1099/* ", body, 1000, 100) is body
    # another range, a body that is not what the header says, more than asked for
    assert ufs.ranged_body(206, "bytes 0-99/5000", body, 1000, 100) is None
    assert ufs.ranged_body(206, "bytes 1000-1199/5000", body, 1000, 200) is None
    assert ufs.ranged_body(206, "bytes 1000-1099/5000", body, 1000, 50) is None
    # no or an unreadable Content-Range, or another status
    assert ufs.ranged_body(206, None, body, 1000, 100) is None
    assert ufs.ranged_body(206, "items 1000-1099/5000", body, 1000, 100) is None
    assert ufs.ranged_body(204, "bytes 1000-1099/5000", body, 1000, 100) is None
    # a 200 is the whole object: the range is cut from it
    whole = memoryview(bytes(range(256)))
    assert bytes(ufs.ranged_body(200, None, whole, 10, 5) or b"") == bytes(range(10, 15))
    assert bytes(ufs.ranged_body(200, None, whole, 250, 100) or b"") == bytes(range(250, 256))
