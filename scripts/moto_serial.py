"""moto's server, answering one request at a time.

moto's TransactWriteItems is not isolated: it applies a transaction's writes one by one and,
when a condition fails, restores the whole table from a copy taken when the transaction
began. With the stock threaded server, a failing transaction can so undo another one that
committed meanwhile, or two can both pass their conditions (seen in our race tests as a
transaction whose writes stayed while its counter update vanished). DynamoDB transactions
are serializable; serving requests one at a time gives moto the same isolation.

It also holds moto to what S3 documents and moto leaves out (path-style requests):
- PutObject and UploadPart verify `x-amz-checksum-sha256` against the body (400 BadDigest);
- ListParts reports each part's ChecksumSHA256 (the one its upload was checked against);
- CopyObject honours `If-None-Match: *` on the destination (412 PreconditionFailed).

It also answers GET /_audio_dedup/posted: what moto's API Gateway management API recorded
of PostToConnection (each connection's posted bytes, concatenated), which moto itself serves
no call to read back.

Usage: python scripts/moto_serial.py -H 127.0.0.1 -p PORT
"""
import base64
import hashlib
import io
import json
import re
from urllib.parse import parse_qs, unquote

import moto.server as server

_run_simple = server.run_simple


def _posted():
    from moto.apigatewaymanagementapi.models import apigatewaymanagementapi_backends

    out = {}
    for regions in apigatewaymanagementapi_backends.values():
        for backend in regions.values():
            for connection_id, connection in backend.connections.items():
                out[connection_id] = connection.data.decode("utf-8", "replace")
    return json.dumps(out).encode()


def _with_test_routes(app):
    def wrapped(environ, start_response):
        if environ.get("PATH_INFO") == "/_audio_dedup/posted":
            body = _posted()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)

    return wrapped


# (upload id, part number) -> the SHA-256 (base64) the part was checked against.
_part_checksums = {}


def _s3_error(start_response, status, code, message):
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    ).encode()
    start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]


def _object_exists(path):
    from moto.s3.models import s3_backends

    bucket, _, key = unquote(path).lstrip("/").partition("/")
    for regions in s3_backends.values():
        backend = regions.get("global") or next(iter(regions.values()), None)
        if backend is None:
            continue
        try:
            if backend.get_object(bucket, key) is not None:
                return True
        except Exception:  # a missing bucket or a delete marker: nothing there
            continue
    return False


def _with_s3_checks(app):
    def wrapped(environ, start_response):
        method = environ.get("REQUEST_METHOD")
        qs = parse_qs(environ.get("QUERY_STRING", ""))
        copying = "HTTP_X_AMZ_COPY_SOURCE" in environ
        want = environ.get("HTTP_X_AMZ_CHECKSUM_SHA256")
        streaming = environ.get("HTTP_X_AMZ_CONTENT_SHA256", "").startswith("STREAMING-") or "aws-chunked" in environ.get(
            "HTTP_CONTENT_ENCODING", ""
        )
        if method == "PUT" and not copying and want and not streaming:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            got = base64.b64encode(hashlib.sha256(body).digest()).decode()
            if got != want:
                return _s3_error(
                    start_response, "400 Bad Request", "BadDigest",
                    "The SHA256 you specified did not match the calculated checksum.",
                )
            if "uploadId" in qs and "partNumber" in qs:
                _part_checksums[(qs["uploadId"][0], int(qs["partNumber"][0]))] = want
        if method == "PUT" and copying and environ.get("HTTP_IF_NONE_MATCH") == "*":
            if _object_exists(environ.get("PATH_INFO", "")):
                return _s3_error(
                    start_response, "412 Precondition Failed", "PreconditionFailed",
                    "At least one of the pre-conditions you specified did not hold",
                )
        if method == "GET" and "uploadId" in qs:
            upload_id = qs["uploadId"][0]
            captured = {}

            def capture(status, headers, exc_info=None):
                captured["status"], captured["headers"] = status, headers

            body = b"".join(app(environ, capture))

            def with_checksum(m):
                value = _part_checksums.get((upload_id, int(m.group(1))))
                tail = f"<ChecksumSHA256>{value}</ChecksumSHA256>" if value else ""
                return m.group(0).replace("</Part>", tail + "</Part>")

            text = re.sub(r"<Part>\s*<PartNumber>(\d+)</PartNumber>.*?</Part>", with_checksum, body.decode(), flags=re.S)
            body = text.encode()
            headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
            start_response(captured["status"], headers)
            return [body]
        return app(environ, start_response)

    return wrapped


def _serial(hostname, port, app, *args, **kwargs):
    kwargs["threaded"] = False
    return _run_simple(hostname, port, _with_test_routes(_with_s3_checks(app)), *args, **kwargs)


server.run_simple = _serial

if __name__ == "__main__":
    server.main()
