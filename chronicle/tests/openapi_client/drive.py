"""Drives `chronicle up` with the client openapi-python-client generated from its served
OpenAPI document, as an integrator would: register, log in, upload a file three ways
(multipart, chunked, tus) and read each back, report samples. Run by chronicle/tests/openapi.rs:

    python3 drive.py <folder holding the generated chronicle_client package> <base URL>

Exits non-zero (an AssertionError naming the step) when an answer is not what the API contract says.
"""

import base64
import hashlib
import io
import json
import sys

sys.path.insert(0, sys.argv[1])
BASE = sys.argv[2]

from chronicle_client import AuthenticatedClient, Client  # noqa: E402
from chronicle_client.api.files import (  # noqa: E402
    files_content,
    files_metadata,
    files_tus_append,
    files_tus_create,
    files_upload,
    files_upload_chunk,
    files_upload_complete,
    files_upload_start,
)
from chronicle_client.api.identity import identity_login, identity_register  # noqa: E402
from chronicle_client.api.monitoring import monitoring_report  # noqa: E402
from chronicle_client.models import Declared, FileForm, Login, Register, SampleJson  # noqa: E402
from chronicle_client.types import File  # noqa: E402


def body(response):
    return json.loads(response.content)


def expect(response, status, step):
    assert response.status_code == status, f"{step}: {response.status_code} {response.content!r}"
    return response


def read_back(client, file_id, data, step):
    got = expect(files_content.sync_detailed(file_id, client=client), 200, step)
    assert got.content == data, f"{step}: the bytes read back differ"
    meta = body(expect(files_metadata.sync_detailed(file_id, client=client), 200, step))
    assert meta["sha256"] == hashlib.sha256(data).hexdigest(), f"{step}: {meta}"
    assert meta["size"] == len(data), f"{step}: {meta}"


anonymous = Client(base_url=BASE)
expect(
    identity_register.sync_detailed(
        client=anonymous,
        body=Register(username="generated", password="correct horse", display_name="Generated"),
    ),
    201,
    "register",
)
login = body(
    expect(
        identity_login.sync_detailed(
            client=anonymous, body=Login(username="generated", password="correct horse")
        ),
        200,
        "login",
    )
)
client = AuthenticatedClient(base_url=BASE, token=login["token"])

# Multipart: POST /api/v1/files.
data = bytes(range(256)) * 40 + b"multipart"
stored = body(
    expect(
        files_upload.sync_detailed(
            client=client,
            body=FileForm(
                file=File(payload=io.BytesIO(data), file_name="a.bin", mime_type="application/octet-stream")
            ),
        ),
        201,
        "multipart upload",
    )
)
read_back(client, stored["id"], data, "multipart upload")

# Chunked: declare, PUT each chunk's raw bytes, complete.
data = bytes(reversed(range(256))) * 300 + b"chunked"
started = body(
    expect(
        files_upload_start.sync_detailed(
            client=client,
            body=Declared(
                name="b.bin",
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                content_type="application/octet-stream",
            ),
        ),
        201,
        "chunked upload start",
    )
)
upload_id, chunk_size = started["upload_id"], started["chunk_size"]
for index, at in enumerate(range(0, len(data), chunk_size)):
    expect(
        files_upload_chunk.sync_detailed(
            upload_id, str(index), client=client, body=File(payload=io.BytesIO(data[at : at + chunk_size]))
        ),
        204,
        f"chunk {index}",
    )
done = body(expect(files_upload_complete.sync_detailed(upload_id, client=client), 201, "complete"))
read_back(client, done["id"], data, "chunked upload")

# tus 1.0: the protocol's headers on the client, its bytes as the PATCH body.
data = b"tus through a generated client " * 1000
tus = client.with_headers({"Tus-Resumable": "1.0.0"})
name = base64.b64encode(b"c.bin").decode()
created = expect(
    files_tus_create.sync_detailed(
        client=tus.with_headers({"Upload-Length": str(len(data)), "Upload-Metadata": f"filename {name}"})
    ),
    201,
    "tus create",
)
tus_id = created.headers["location"].rstrip("/").rsplit("/", 1)[-1]
appended = expect(
    files_tus_append.sync_detailed(
        tus_id, client=tus.with_headers({"Upload-Offset": "0"}), body=File(payload=io.BytesIO(data))
    ),
    204,
    "tus append",
)
assert appended.headers["upload-offset"] == str(len(data)), appended.headers
read_back(client, appended.headers["chronicle-file-id"], data, "tus upload")

# Samples as JSON.
reported = body(
    expect(
        monitoring_report.sync_detailed(client=client, body=[SampleJson(metric="generated_client_runs", value=1.0)]),
        202,
        "report samples",
    )
)
assert reported["accepted"] == 1, reported

print("generated client: register, login, 3 uploads read back, samples: ok")
