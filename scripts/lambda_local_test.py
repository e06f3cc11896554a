"""Local invocation test of the Lambda functions, against moto.

Drives the real function binaries (the workspace's debug build, each polling its own path of
`cargo lambda watch --only-lambda-apis`, the runtime emulator, bound to 127.0.0.1), with their
AWS endpoint pointed at moto, through a whole flow:
  - through `cargo lambda invoke --data-file` with API Gateway v2 events (built from the SAM
    fixture) carrying JWT claims: upload the same content twice (deduplicated), add and remove
    references, read the stats, open an upload session and PUT to its presigned URL, a parted
    upload (parts signed, one refused, listed, completed and verified), feed the S3 created and
    removed events to s3-events, run the reconciler;
  - through plain HTTP to the function URLs, which carry no authorizer claims: /healthz answers,
    every /v1 route answers 401 (identity cannot come from anywhere else);
  - live updates: live-authorizer with tokens signed here (ES256) against a JWKS served here,
    live-connections with WebSocket $connect/$disconnect events and the client's ping frame, live-stream with DynamoDB
    Streams events, whose pokes are read back from moto's API Gateway management API.
Then checks that the DynamoDB item is `gone` and the S3 object is gone.

Usage (scripts/test does this): python lambda_local_test.py <watch-port> <moto-endpoint> <cargo-lambda-bin>
"""

import base64
import copy
import hashlib
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import boto3
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

PORT, MOTO, CARGO_LAMBDA = sys.argv[1], sys.argv[2], sys.argv[3]
TABLE, BUCKET, PREFIX = os.environ["TABLE_NAME"], os.environ["BUCKET_NAME"], os.environ["KEY_PREFIX"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "functions", "fixtures")
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return json.load(f)


def api_event(method, path, query="", sub="alice", body=None):
    e = fixture("apigw-http.json")
    e["rawPath"], e["rawQueryString"] = path, query
    e["queryStringParameters"] = dict(p.split("=", 1) for p in query.split("&") if p)
    e["pathParameters"], e["cookies"] = {}, []
    e["headers"] = {"content-type": "application/json"}
    e["requestContext"]["http"]["method"] = method
    e["requestContext"]["http"]["path"] = path
    e["routeKey"] = f"{method} {path}"
    e["requestContext"]["authorizer"]["jwt"]["claims"] = {"sub": sub, "iss": "https://issuer.example"}
    if body is None:
        e.pop("body", None)
        e["isBase64Encoded"] = False
    else:
        e["body"] = base64.b64encode(body).decode()
        e["isBase64Encoded"] = True
    return e


def invoke(function, event):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(event, f)
        path = f.name
    out = subprocess.run(
        [CARGO_LAMBDA, "lambda", "invoke", function, "-A", "127.0.0.1", "-P", PORT, "--data-file", path],
        capture_output=True, text=True, timeout=600,
    )
    os.unlink(path)
    if out.returncode != 0:
        return {"error": out.stderr.strip() or out.stdout.strip()}
    return json.loads(out.stdout)


def http_call(function, event):
    """Invoke an HTTP function and decode its API Gateway response."""
    r = invoke(function, event)
    if "statusCode" not in r:
        return 0, r
    body = r.get("body") or ""
    if r.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return r["statusCode"], (json.loads(body) if body else None)


def plain_http(path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}{path}", timeout=600) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def s3_event(fixture_name, key, version):
    e = fixture(fixture_name)
    e["Records"][0]["s3"]["bucket"]["name"] = BUCKET
    e["Records"][0]["s3"]["object"]["key"] = key
    e["Records"][0]["s3"]["object"]["versionId"] = version
    return e


session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
s3 = session.client("s3", endpoint_url=MOTO)
ddb = session.client("dynamodb", endpoint_url=MOTO)

# The stores (in AWS the template creates them).
ddb.create_table(
    TableName=TABLE,
    BillingMode="PAY_PER_REQUEST",
    AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in ["pk", "sk", "wpk", "wsk"]],
    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    GlobalSecondaryIndexes=[
        {"IndexName": name, "Projection": {"ProjectionType": "ALL"},
         "KeySchema": [{"AttributeName": h, "KeyType": "HASH"}, {"AttributeName": r, "KeyType": "RANGE"}]}
        for name, h, r in [("work", "wpk", "wsk")]
    ],
)
s3.create_bucket(Bucket=BUCKET)
s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})

song = hashlib.sha256(b"seed").digest() * 4096  # 128 KiB
digest = hashlib.sha256(song).hexdigest()
key = f"{PREFIX}audio/{digest}"

# Through plain HTTP: the function URL carries no JWT claims.
check(plain_http("/lambda-url/stats/healthz") == 200, "HTTP /healthz through the function URL answers 200")
check(plain_http("/lambda-url/stats/v1/audio/stats") == 401, "HTTP /v1/audio/stats without authorizer claims answers 401")
check(plain_http("/lambda-url/upload/v1/audio/" + digest) == 401, "HTTP GET /v1/audio/{hash} without claims answers 401")

# Through invoke, with claims.
st, body = http_call("upload", api_event("POST", "/v1/audio", "format=mp3&ref_kind=message&ref_id=m1", "alice", song))
check(st == 201 and body and body["deduplicated"] is False, f"first upload stores (201): {st} {body}")
st, body = http_call("upload", api_event("POST", "/v1/audio", "format=mp3&ref_kind=library&ref_id=l1", "bob", song))
check(st == 200 and body and body["deduplicated"] is True, f"second upload is deduplicated (200): {st}")
st, body = http_call("references", api_event("PUT", f"/v1/audio/{digest}/references/l2", "", "bob", b'{"kind":"library"}'))
check(st == 200, f"bob adds a reference: {st} {body}")
st, body = http_call("references", api_event("DELETE", f"/v1/audio/{digest}/references/m1", "", "bob", None))
check(st == 404, f"bob cannot remove alice's reference: {st}")
st, body = http_call("stats", api_event("GET", "/v1/audio/stats", "", "alice", None))
check(st == 200 and body["unique_files"] == 1 and body["total_references"] == 3, f"stats: {body}")
versions = s3.list_object_versions(Bucket=BUCKET, Prefix=key).get("Versions", [])
check(len(versions) == 1, f"one object in S3: {len(versions)}")
v1 = versions[0]["VersionId"] if versions else ""

# The created event for that object: a duplicate, late delivery. A no-op.
r = invoke("s3-events", s3_event("s3-put.json", key, v1))
check(r.get("applied", 0) + r.get("ignored", 0) == 1, f"late created event handled: {r}")

# Remove every reference: the last one deletes the exact version.
for who, ref in [("alice", "m1"), ("bob", "l1"), ("bob", "l2")]:
    st, _ = http_call("references", api_event("DELETE", f"/v1/audio/{digest}/references/{ref}", "", who, None))
    check(st == 204, f"{who} removes {ref}: {st}")
check(not s3.list_object_versions(Bucket=BUCKET, Prefix=key).get("Versions"), "the object (every version) is gone from S3")
# S3's removed event arrives (twice): finishing an already-finished deletion is a no-op.
for _ in range(2):
    r = invoke("s3-events", s3_event("s3-delete.json", key, v1))
    check("error" not in r, f"removed event handled: {r}")
item = ddb.get_item(TableName=TABLE, Key={"pk": {"S": f"AUDIO#{digest}"}, "sk": {"S": "META"}}, ConsistentRead=True)
state = json.loads(item["Item"]["body"]["S"])["state"] if "Item" in item else None
check(state == "gone", f"the audio item is gone: {state}")

# An upload session: presigned PUT straight to S3 (moto), then the created event completes it.
big = hashlib.sha256(b"session").digest() * 32768  # 1 MiB
big_digest = hashlib.sha256(big).hexdigest()
st, sess = http_call("upload", api_event("POST", "/v1/audio/uploads", "", "carol",
                                         json.dumps({"sha256": big_digest, "size": len(big), "format": "wav",
                                                     "reference": {"kind": "message", "ref_id": "c1"}}).encode()))
check(st == 201 and sess["upload"]["method"] == "PUT", f"session opened: {st}")
signed = sess["upload"]["url"].split("?", 1)[1]
check("x-amz-checksum-sha256" in urllib.request.unquote(signed), "the presigned PUT signs x-amz-checksum-sha256")
req = urllib.request.Request(sess["upload"]["url"], data=big, method="PUT", headers=sess["upload"]["headers"])
with urllib.request.urlopen(req, timeout=60) as r:
    check(r.status == 200, f"PUT to the presigned URL: {r.status}")
big_key = f"{PREFIX}audio/{big_digest}"
v = s3.list_object_versions(Bucket=BUCKET, Prefix=big_key)["Versions"][0]["VersionId"]
r = invoke("s3-events", s3_event("s3-put.json", big_key, v))
check(r.get("applied") == 1, f"created event activates the upload: {r}")
st, done = http_call("upload", api_event("POST", f"/v1/audio/{big_digest}/complete", "", "carol",
                                         json.dumps({"session_id": sess["session_id"]}).encode()))
check(st == 200 and done["state"] == "active", f"complete after the event is a no-op success: {st}")
st, body = http_call("stats", api_event("GET", "/v1/audio/stats", "", "carol", None))
check(body["unique_files"] == 1 and body["total_references"] == 1, f"stats after the session: {body}")
# Threads and messages: a message holding carol's audio, with a snapshot too big for a
# DynamoDB item (stored in S3), read by a member, deleted by its author only.
st, t = http_call("threads", api_event("POST", "/v1/threads", "", "carol",
                                       json.dumps({"id": "jam", "title": "Jam", "members": ["dave"]}).encode()))
check(st == 201 and t["members"] == ["carol", "dave"], f"thread created: {st} {t}")
snap = {"notes": "n" * 400_000}
msg = {"id": "0190c0de-0001", "snapshot": snap, "audio": {"content_hash": big_digest, "format": "wav"}}
st, m = http_call("threads", api_event("POST", "/v1/threads/jam/messages", "", "carol", json.dumps(msg).encode()))
check(st == 201 and m["cursor"] == "1", f"message created: {st}")
st, again = http_call("threads", api_event("POST", "/v1/threads/jam/messages", "", "carol", json.dumps(msg).encode()))
check(st == 200 and again == m, f"the same create retried answers the same message: {st}")
snaps = s3.list_object_versions(Bucket=BUCKET, Prefix=f"{PREFIX}snapshots/").get("Versions", [])
check(len(snaps) == 1, f"the big snapshot is one S3 object: {len(snaps)}")
st, page = http_call("threads", api_event("GET", "/v1/threads/jam/messages", "after=0", "dave", None))
check(st == 200 and [i["id"] for i in page["items"]] == ["0190c0de-0001"], f"dave syncs the message: {st}")
st, got = http_call("threads", api_event("GET", "/v1/messages/0190c0de-0001/snapshot", "", "dave", None))
check(st == 200 and got == snap, f"dave reads the snapshot from S3: {st}")
st, _ = http_call("threads", api_event("GET", "/v1/threads/jam/messages", "", "eve", None))
check(st == 404, f"a non-member gets 404: {st}")
st, _ = http_call("threads", api_event("DELETE", "/v1/threads/jam/messages/0190c0de-0001", "", "dave", None))
check(st == 404, f"only the author deletes: {st}")
# The library: carol's item holds the audio too; dave cannot take it.
st, item = http_call("library", api_event("PUT", "/v1/library/fav", "", "carol",
                                          json.dumps({"content_hash": big_digest, "title": "Fav"}).encode()))
check(st == 201 and item["state"] == "live", f"library item put: {st}")
st, _ = http_call("library", api_event("PUT", "/v1/library/fav", "", "dave",
                                       json.dumps({"content_hash": big_digest, "title": "Mine"}).encode()))
check(st == 404, f"dave never held the audio: {st}")
# Dave never uploaded carol's audio: the audio route is closed to him, the message opens it.
st, _ = http_call("upload", api_event("GET", f"/v1/audio/{big_digest}", "", "dave", None))
check(st == 404, f"dave does not hold the audio: {st}")
audio_path = "/v1/threads/jam/messages/0190c0de-0001/audio"
st, heard = http_call("threads", api_event("GET", audio_path, "", "dave", None))
check(st == 200 and heard["content_hash"] == big_digest, f"a member gets the message's audio: {st} {heard}")
with urllib.request.urlopen(heard["url"], timeout=60) as r:
    check(hashlib.sha256(r.read()).hexdigest() == big_digest, "the presigned GET serves the exact bytes")
st, _ = http_call("threads", api_event("GET", audio_path, "", "eve", None))
check(st == 404, f"a non-member gets 404 for the message's audio: {st}")
# Membership: any member adds (eve then hears the history), anyone leaves (404 again after).
st, t = http_call("threads", api_event("POST", "/v1/threads/jam/members", "", "dave",
                                       json.dumps({"member": "eve"}).encode()))
check(st == 201 and t["members"] == ["carol", "dave", "eve"], f"dave adds eve: {st} {t}")
st, _ = http_call("threads", api_event("GET", audio_path, "", "eve", None))
check(st == 200, f"a new member hears the history: {st}")
st, _ = http_call("threads", api_event("DELETE", "/v1/threads/jam/members/carol", "", "dave", None))
check(st == 403, f"only the creator removes others: {st}")
st, _ = http_call("threads", api_event("DELETE", "/v1/threads/jam/members/eve", "", "eve", None))
check(st == 204, f"eve leaves: {st}")
st, _ = http_call("threads", api_event("GET", audio_path, "", "eve", None))
check(st == 404, f"after leaving, eve gets a stranger's 404: {st}")
st, feed = http_call("threads", api_event("GET", "/v1/threads", "", "eve", None))
check(st == 200 and feed["items"][-1].get("left") is True, f"eve's feed says she left: {feed}")
st, saved = http_call("library", api_event("PUT", "/v1/library/from-carol", "", "dave",
                                           json.dumps({"from_message": "0190c0de-0001", "title": "Carol's"}).encode()))
check(st == 201 and saved["content_hash"] == big_digest, f"dave saves it from the message: {st}")
st, _ = http_call("upload", api_event("GET", f"/v1/audio/{big_digest}", "", "dave", None))
check(st == 200, f"saving made dave a holder: {st}")
st, body = http_call("stats", api_event("GET", "/v1/audio/stats", "", "carol", None))
check(body["total_references"] == 4, f"session + message + two library references: {body}")
st, _ = http_call("threads", api_event("DELETE", "/v1/threads/jam/messages/0190c0de-0001", "", "carol", None))
check(st == 204, f"carol deletes her message: {st}")
check(not s3.list_object_versions(Bucket=BUCKET, Prefix=f"{PREFIX}snapshots/").get("Versions"),
      "the snapshot object is purged with its message")
st, _ = http_call("library", api_event("DELETE", "/v1/library/fav", "", "carol", None))
check(st == 204, f"carol deletes her library item: {st}")
st, _ = http_call("library", api_event("DELETE", "/v1/library/from-carol", "", "dave", None))
check(st == 204, f"dave deletes his saved copy: {st}")
st, body = http_call("stats", api_event("GET", "/v1/audio/stats", "", "carol", None))
check(body["total_references"] == 1 and body["unique_files"] == 1, f"the session's reference keeps the audio: {body}")

# A parted upload (content above the 8 MiB part size): parts signed by the upload function,
# each PUT straight to S3 with its own checksum; a wrong part refused; the parts listed (the
# resume point); complete assembles, verifies the whole SHA-256 and publishes under the hash.
huge = hashlib.sha256(b"parted").digest() * (9 * 32768)  # 9 MiB: parts of 8 MiB and 1 MiB
huge_digest = hashlib.sha256(huge).hexdigest()
st, ps = http_call("upload", api_event("POST", "/v1/audio/uploads", "", "erin",
                                       json.dumps({"sha256": huge_digest, "size": len(huge), "format": "wav"}).encode()))
check(st == 201 and "upload" not in ps and ps["parts"]["part_count"] == 2, f"a parted session: {st} {ps.get('parts')}")
part_size = ps["parts"]["part_size"]
chunks = [huge[:part_size], huge[part_size:]]
parts = [{"number": i + 1, "size": len(c), "sha256": hashlib.sha256(c).hexdigest()} for i, c in enumerate(chunks)]
st, signed = http_call("upload", api_event("POST", f"/v1/audio/{huge_digest}/parts", "", "erin",
                                           json.dumps({"session_id": ps["session_id"], "parts": parts}).encode()))
check(st == 200 and len(signed["parts"]) == 2, f"parts signed: {st}")
st, _ = http_call("upload", api_event("POST", f"/v1/audio/{huge_digest}/parts", "", "mallory",
                                      json.dumps({"session_id": ps["session_id"], "parts": parts}).encode()))
check(st == 404, f"someone else's session is not found: {st}")


def put_part(n, data):
    up = signed["parts"][n - 1]["upload"]
    # urllib would send a form content type otherwise (unsigned either way).
    headers = {"content-type": "application/octet-stream", **up["headers"]}
    req = urllib.request.Request(up["url"], data=data, method="PUT", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        print(f"     part {n}: {e.code} {e.read()[:300]!r}", flush=True)
        return e.code


check(put_part(1, b"x" + chunks[0][1:]) == 400, "a part with wrong bytes is refused by S3")
check(put_part(1, chunks[0]) == 200, "part 1 stored")
st, listed = http_call("upload", api_event("GET", f"/v1/audio/{huge_digest}/parts", f"session_id={ps['session_id']}", "erin", None))
check(st == 200 and [p["number"] for p in listed["parts"]] == [1], f"the server lists part 1 (the resume point): {st} {listed}")
st, early = http_call("upload", api_event("POST", f"/v1/audio/{huge_digest}/complete", "", "erin",
                                          json.dumps({"session_id": ps["session_id"]}).encode()))
check(st == 409 and early["error"]["code"] == "parts_missing", f"completing early names what is missing: {st} {early}")
check(put_part(2, chunks[1]) == 200, "part 2 stored")
st, done = http_call("upload", api_event("POST", f"/v1/audio/{huge_digest}/complete", "", "erin",
                                         json.dumps({"session_id": ps["session_id"]}).encode()))
check(st == 200 and done["state"] == "active" and done["size"] == len(huge), f"complete publishes it: {st} {done}")
huge_key = f"{PREFIX}audio/{huge_digest}"
with urllib.request.urlopen(done["url"], timeout=60) as r:
    check(hashlib.sha256(r.read()).hexdigest() == huge_digest, "the published object is the content")
staged = s3.list_object_versions(Bucket=BUCKET, Prefix=f"{PREFIX}staging/").get("Versions", [])
check(not staged and not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads"), "nothing left staged")

# ---------- Live updates ----------
def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def signing_key(kid):
    key = ec.generate_private_key(ec.SECP256R1())
    n = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
           "x": b64url(n.x.to_bytes(32, "big")), "y": b64url(n.y.to_bytes(32, "big"))}
    return key, jwk


def jwt(key, kid, claims):
    header = b64url(json.dumps({"alg": "ES256", "typ": "JWT", "kid": kid}).encode())
    payload = b64url(json.dumps(claims).encode())
    r, s_ = decode_dss_signature(key.sign(f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA256())))
    return f"{header}.{payload}.{b64url(r.to_bytes(32, 'big') + s_.to_bytes(32, 'big'))}"


issuer_key, issuer_jwk = signing_key("local-1")


class Jwks(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"keys": [issuer_jwk]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


jwks_server = http.server.HTTPServer(("127.0.0.1", int(os.environ["JWKS_PORT"])), Jwks)
threading.Thread(target=jwks_server.serve_forever, daemon=True).start()


def claims(sub, **over):
    c = {"sub": sub, "iss": os.environ["JWT_ISSUER"], "aud": "audio-dedup", "exp": int(time.time()) + 600}
    c.update(over)
    return c


def authorize(token):
    e = fixture("ws-authorizer.json")
    e["headers"]["Authorization"] = e["multiValueHeaders"]["Authorization"][0] = f"Bearer {token}"
    r = invoke("live-authorizer", e)
    st = r.get("policyDocument", {}).get("Statement", [{}])[0]
    return r.get("principalId"), st.get("Effect")


good = jwt(issuer_key, "local-1", claims("dave"))
check(authorize(good) == ("dave", "Allow"), f"a valid token connects as its subject: {authorize(good)}")
forger, _ = signing_key("local-1")
header, payload, sig = good.split(".")
for what, token in [
    ("expired", jwt(issuer_key, "local-1", claims("dave", exp=int(time.time()) - 3600))),
    ("wrong audience", jwt(issuer_key, "local-1", claims("dave", aud="another-app"))),
    ("wrong issuer", jwt(issuer_key, "local-1", claims("dave", iss="https://evil.example"))),
    ("tampered", f"{header}.{b64url(json.dumps(claims('carol')).encode())}.{sig}"),
    ("signed by another key", jwt(forger, "local-1", claims("dave"))),
]:
    got = authorize(token)
    check(got[1] == "Deny", f"a token {what} is denied: {got}")


def ws_event(fixture_name, user, connection):
    e = fixture(fixture_name)
    e["requestContext"]["authorizer"] = {"principalId": user, "user": user, "integrationLatency": 12}
    e["requestContext"]["connectionId"] = connection
    return e


def connections_of(user):
    items = ddb.query(TableName=TABLE, KeyConditionExpression="pk = :pk",
                      ExpressionAttributeValues={":pk": {"S": f"LIVE#{user}"}}, ConsistentRead=True)["Items"]
    return {i["sk"]["S"]: int(i["expires_at"]["N"]) for i in items}


# carol and dave are in thread "jam"; eve is not. Each opens a connection (dave two).
for user, conn in [("carol", "C1="), ("dave", "D1="), ("dave", "D2="), ("eve", "E1=")]:
    r = invoke("live-connections", ws_event("ws-connect.json", user, conn))
    check(r.get("statusCode") == 200, f"$connect of {user} ({conn}): {r}")
now = int(time.time())
check(set(connections_of("dave")) == {"CONN#D1=", "CONN#D2="}, f"dave's connections recorded: {connections_of('dave')}")
check(all(now + 7000 < t < now + 8000 for t in connections_of("dave").values()), "records expire after 2 h (TTL)")
r = invoke("live-connections", ws_event("ws-disconnect.json", "dave", "D2="))
check(r.get("statusCode") == 200 and set(connections_of("dave")) == {"CONN#D1="}, f"$disconnect forgets D2=: {r}")


def client_ping_frame():
    """The keepalive frame exactly as the client sends it (client/src/live.rs, `PING`)."""
    with open(os.path.join(ROOT, "client", "src", "live.rs")) as f:
        for line in f:
            if "const PING: &str = r#\"" in line:
                return line.split('r#"', 1)[1].rsplit('"#', 1)[0]
    raise SystemExit("client/src/live.rs has no PING frame")


# The keepalive: the client's own frame, routed as `ping` ($request.body.action), answers
# 200 with the pong (the route response sends it back) and touches no connection record.
ping = ws_event("ws-ping.json", "dave", "D1=")
ping["body"] = client_ping_frame()
check(json.loads(ping["body"]).get("action") == ping["requestContext"]["routeKey"] == "ping",
      f"the client's frame is routed to ping: {ping['body']}")
r = invoke("live-connections", ping)
check(r.get("statusCode") == 200 and json.loads(r.get("body") or "{}") == {"kind": "pong"}, f"ping answers pong: {r}")
check(set(connections_of("dave")) == {"CONN#D1="}, "ping leaves the connection records alone")


def stream_record(name, pk, sk, n):
    rec = copy.deepcopy(fixture("dynamodb-stream.json")["Records"][0])
    rec["eventName"] = name
    rec["eventID"] = f"live-{n}"
    rec["dynamodb"]["Keys"] = {"pk": {"S": pk}, "sk": {"S": sk}}
    rec["dynamodb"]["SequenceNumber"] = str(1000 + n)
    return rec


def posted():
    with urllib.request.urlopen(f"{MOTO}/_audio_dedup/posted", timeout=30) as r:
        raw = json.load(r)
    out = {}
    for conn, text in raw.items():
        pokes, i, dec = [], 0, json.JSONDecoder()
        while i < len(text):
            poke, i = dec.raw_decode(text, i)
            pokes.append(poke)
        out[urllib.parse.unquote(conn)] = pokes
    return out


log = lambda n: f"LOG#{n:020d}"
batch = {"Records": [
    stream_record("INSERT", "THREAD#jam", log(3), 1),
    stream_record("INSERT", "THREAD#jam", log(3), 1),  # a duplicate delivery
    stream_record("INSERT", "THREAD#jam", log(2), 2),  # older, after newer
    stream_record("MODIFY", "THREAD#jam", "META", 3),  # not a log entry
    stream_record("INSERT", "FEED#dave", log(1), 4),
    stream_record("REMOVE", "LIVE#carol", "CONN#old=", 5),  # a TTL expiry
    stream_record("INSERT", f"AUDIO#{big_digest}", "META", 6),
    stream_record("INSERT", "THREAD#nobody", log(1), 7),  # a thread that does not exist
]}
r = invoke("live-stream", batch)
check(r.get("pokes") == 3 and r.get("posted") == 3 and r.get("failed") == 0, f"stream batch fanned out: {r}")
got = posted()
check(got.get("C1=") == [{"kind": "thread", "id": "jam", "cursor": "3"}], f"carol (member) poked once: {got.get('C1=')}")
check(sorted(got.get("D1=", []), key=json.dumps) == sorted(
    [{"kind": "thread", "id": "jam", "cursor": "3"}, {"kind": "feed", "cursor": "1"}], key=json.dumps),
    f"dave poked for the thread and his feed: {got.get('D1=')}")
check("E1=" not in got, f"eve (not a member) is poked about nothing: {got.get('E1=')}")
check("D2=" not in got, "a closed connection is not posted to")
r = invoke("live-stream", {"Records": [stream_record("MODIFY", f"AUDIO#{big_digest}", "META", 8)]})
check(r.get("pokes") == 0 and r.get("posted") == 0, f"a batch with no log entry posts nothing: {r}")

r = invoke("reconciler", {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}})
check("error" not in r and "orphans_deleted" in r, f"reconciler pass: {r}")

print(f"\nlambda local invocation: {len(failures)} failed")
sys.exit(1 if failures else 0)
