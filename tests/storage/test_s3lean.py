"""storage/s3lean.py: SigV4-signed GETs without botocore, behind Store's s3:// reads."""

from __future__ import annotations

import hashlib
import http.server
import threading
import uuid
from collections.abc import Iterator

import pytest

from s3dlio_loader import InvalidRangeError, ObjectNotFoundError, Store
from s3dlio_loader.storage.s3lean import LeanS3Reader, S3ReadError, WrongRegionError, lean_reader_for, sign

AWS_EXAMPLE_KEY = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")


def test_signature_matches_the_aws_sigv4_test_suite():
    # "get-vanilla" of AWS's published SigV4 test suite.
    headers = {"host": "example.amazonaws.com", "x-amz-date": "20150830T123600Z"}
    auth = sign("GET", "/", "", headers, hashlib.sha256(b"").hexdigest(), key=AWS_EXAMPLE_KEY[0],
                secret=AWS_EXAMPLE_KEY[1], region="us-east-1", amz_date="20150830T123600Z", service="service")
    assert auth == ("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
                    "SignedHeaders=host;x-amz-date, "
                    "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")


@pytest.mark.parametrize("key", ["plain/key.bin", "with space/and+plus=eq.bin", "ünïcode/日本/x", "a/b//c~d_e-f.g"])
@pytest.mark.parametrize("token", [None, "SESSION/TOKEN+=="])
def test_signature_matches_botocore(key, token):
    """botocore's S3 signer is the reference: the same request must get the same signature."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    reader = LeanS3Reader("http://127.0.0.1:9000", "eu-west-1", lambda: (*AWS_EXAMPLE_KEY, token))
    url, host, canonical_uri = reader._address("my-bucket", key)
    amz_date = "20261122T101500Z"
    ours = {"host": host, "x-amz-content-sha256": "UNSIGNED-PAYLOAD", "x-amz-date": amz_date}
    if token:
        ours["x-amz-security-token"] = token
    expected_request = AWSRequest(method="GET", url=url, headers={
        "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD", "X-Amz-Date": amz_date,
        **({"X-Amz-Security-Token": token} if token else {}),
    })  # fmt: skip
    botocore_signer = S3SigV4Auth(Credentials(*AWS_EXAMPLE_KEY, token), "s3", "eu-west-1")
    expected_request.context["timestamp"] = amz_date
    canonical = botocore_signer.canonical_request(expected_request)
    expected = botocore_signer.signature(botocore_signer.string_to_sign(expected_request, canonical), expected_request)
    assert reader._authorization(canonical_uri, ours, *AWS_EXAMPLE_KEY, amz_date).endswith(f"Signature={expected}")


@pytest.fixture
def s3_store(moto_server) -> Iterator[tuple[Store, str]]:
    bucket = f"lean-{uuid.uuid4().hex[:8]}"
    moto_server.make_bucket(bucket)
    store = Store("s3", moto_server.storage_options(), retry_base_delay=0.001)
    yield store, f"s3://{bucket}"
    store.close()


def test_store_reads_s3_through_the_lean_reader(s3_store):
    store, root = s3_store
    blobs = {f"{root}/{k}": bytes([i]) * (1000 + i) for i, k in enumerate(
        ["a.bin", "dir/with space.bin", "ünï/日本.bin", "plus+eq=.bin", "q?x#y.bin"])}  # fmt: skip
    for uri, data in blobs.items():
        store.put(uri, data)
    assert store._proc().lean is not None
    store.stats.reset()
    for uri, data in blobs.items():
        assert store.get(uri) == data
        assert store.get_range(uri, 10, 20) == data[10:30]
        assert [bytes(v) for v in store.get_ranges(uri, [(0, 5), (900, 50)])] == [data[:5], data[900:950]]
    assert dict(store.get_many(list(blobs))) == blobs
    assert store.stats.errors == 0 and store.stats.bytes_read > 0
    missing = f"{root}/missing.bin"
    with pytest.raises(ObjectNotFoundError, match=r"missing\.bin"):
        store.get(missing)
    with pytest.raises(InvalidRangeError):
        store.get_range(f"{root}/a.bin", 5000, 10)
    assert store._proc().lean is not None


def test_options_the_lean_reader_does_not_reproduce_leave_reads_to_s3fs(moto_server, monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    base = moto_server.storage_options()
    assert lean_reader_for(base, 8) is not None
    assert lean_reader_for({**base, "requester_pays": True}, 8) is None
    assert lean_reader_for({**base, "profile": "other"}, 8) is None
    assert lean_reader_for({**base, "client_kwargs": {**base["client_kwargs"], "verify": False}}, 8) is None
    assert lean_reader_for({"key": "k", "secret": "s"}, 8) is None, "AWS without a region: s3fs finds it"
    assert lean_reader_for({"key": "k", "secret": "s", "client_kwargs": {"region_name": "eu-west-3"}}, 8).endpoint \
        == "https://s3.eu-west-3.amazonaws.com"
    anonymous = lean_reader_for({"anon": True, "client_kwargs": base["client_kwargs"]}, 8)
    assert anonymous is not None and anonymous._credentials is None
    store = Store("s3", {**base, "requester_pays": True})
    assert store._proc().lean is None
    store = Store("s3", base, s3_lean_reads=False)
    assert store._proc().lean is None


class _Redirect(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint for a bucket in another region: every GET gets a 301 PermanentRedirect."""

    def do_GET(self) -> None:
        body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>PermanentRedirect</Code>"
                b"<Message>The bucket you are attempting to access must be addressed using the specified "
                b"endpoint.</Message></Error>")  # fmt: skip
        self.send_response(301)
        self.send_header("x-amz-bucket-region", "eu-central-1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_bucket_in_another_region_falls_back_to_s3fs(s3_store):
    store, root = s3_store
    store.put(f"{root}/x.bin", b"payload")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        redirecting = LeanS3Reader(f"http://127.0.0.1:{server.server_port}", "us-east-1", lambda: ("k", "s", None))
        with pytest.raises(WrongRegionError, match="eu-central-1"):
            redirecting.get(root[5:], "x.bin")
        store._proc().lean = redirecting
        assert store.get(f"{root}/x.bin") == b"payload"  # through s3fs, which finds the region itself
        assert store._proc().lean is None
    finally:
        server.shutdown()
        server.server_close()


def test_http_errors_carry_status_and_code_for_the_retry_policy():
    from s3dlio_loader.storage import retry
    from s3dlio_loader.storage.s3lean import _error

    slow = _error("b", "k", 503, b"<Error><Code>SlowDown</Code><Message>Reduce your request rate</Message></Error>",
                  {})  # fmt: skip
    assert isinstance(slow, S3ReadError) and retry.is_transient(slow) and "s3://b/k" in str(slow)
    assert isinstance(_error("b", "k", 404, b"<Error><Code>NoSuchKey</Code></Error>", {}), FileNotFoundError)
    assert isinstance(_error("b", "k", 403, b"<Error><Code>AccessDenied</Code></Error>", {}), PermissionError)
    bad = _error("b", "k", 400, b"<Error><Code>InvalidArgument</Code></Error>", {})
    assert not retry.is_transient(bad) and bad.error_code == "InvalidArgument"
