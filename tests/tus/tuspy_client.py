"""Drives tuspy (the tus project's Python client, from PyPI) against Chronicle's tus
endpoint for tests/spine/tus.rs. Everything comes from the environment: TUS_URL (the
endpoint), TUS_TOKEN (a bearer token), TUS_FILE (the file to upload), TUS_CHUNK (bytes per
PATCH) and, to resume, TUS_STORAGE (tuspy's URL store). Prints one JSON line per step."""

import hashlib
import json
import os
import sys
import time

from tusclient import client
from tusclient.exceptions import TusCommunicationError
from tusclient.storage import filestorage


def uploader(**extra):
    tus = client.TusClient(
        os.environ["TUS_URL"],
        headers={"Authorization": "Bearer " + os.environ["TUS_TOKEN"]},
    )
    path = os.environ["TUS_FILE"]
    return tus.uploader(
        path,
        chunk_size=int(os.environ.get("TUS_CHUNK", str(1 << 20))),
        metadata={"filename": os.path.basename(path), "filetype": "application/octet-stream"},
        **extra,
    )


def stored(**extra):
    storage = filestorage.FileStorage(os.environ["TUS_STORAGE"])
    return uploader(store_url=True, url_storage=storage, **extra)


def say(**fields):
    print(json.dumps(fields), flush=True)


def finished(u):
    say(url=u.url, offset=u.offset,
        file_id=u.request.response_headers.get("chronicle-file-id") if u.request else None)


def main(step):
    if step == "upload":
        u = uploader(upload_checksum=True)
        u.upload()
        finished(u)
    elif step == "half":
        # Half the file, then wait to be killed.
        u = stored(upload_checksum=True)
        u.upload(stop_at=u.get_file_size() // 2)
        say(url=u.url, offset=u.offset, half=True)
        time.sleep(600)
    elif step == "resume":
        # tuspy finds the upload by the file's fingerprint and asks the server its offset.
        u = stored(upload_checksum=True)
        say(url=u.url, resumed_from=u.offset)
        u.upload()
        finished(u)
    elif step == "corrupt":
        # A digest that is not the bytes': the server must refuse them (460).
        u = uploader(upload_checksum=True)
        u._BaseUploader__checksum_algorithm = lambda data: hashlib.sha1(b"corrupted" + data)
        try:
            u.upload()
            say(status="uploaded")
        except TusCommunicationError as error:
            say(status=error.status_code, url=u.url, offset=u.get_offset())
    else:
        sys.exit("unknown step " + step)


if __name__ == "__main__":
    main(sys.argv[1])
