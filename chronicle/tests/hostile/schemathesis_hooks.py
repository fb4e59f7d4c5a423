"""Schemathesis checks of Chronicle's own (the API contract: every error is RFC 9457 problem+json).

Loaded by `chronicle/tests/schemathesis.rs` through SCHEMATHESIS_HOOKS.
"""

import json

import schemathesis


# tus PATCH bodies (the API contract Files): raw bytes, as for application/octet-stream.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")


@schemathesis.check
def problem_json_errors(ctx, response, case):
    """Every 4xx and 5xx is application/problem+json with type, title, status and code."""
    if response.status_code < 400 or case.method.upper() == "HEAD":
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    shown = response.content[:300]
    assert content_type.startswith(
        "application/problem+json"
    ), f"{response.status_code} answered as {content_type!r}: {shown!r}"
    try:
        body = json.loads(response.content)
    except ValueError as error:
        raise AssertionError(f"a problem body that is not JSON ({error}): {shown!r}")
    missing = [field for field in ("type", "title", "status", "code") if field not in body]
    assert not missing, f"a problem without {missing}: {shown!r}"
    assert (
        body["status"] == response.status_code
    ), f"the problem says status {body['status']}, the response is {response.status_code}"
    return None
