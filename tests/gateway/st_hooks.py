"""Schemathesis hooks for the gateway run (loaded through SCHEMATHESIS_HOOKS).

* MessagePack both ways, so the ``application/msgpack`` bodies and answers the
  document declares are exercised and validated too (binary fields become
  base64 text, as the JSON Schema of ``bytes`` says).
* ``spear_no_server_error``: the built-in ``not_a_server_error`` with one
  documented exception. A synchronous invocation answers with the status of
  the execution's outcome (502 FUNCTION_ERROR, 504 DEADLINE_EXCEEDED, 503 when
  no node can ever place it...), and then the error body names the
  execution. Those are the function's results, not the gateway failing; a 5xx
  without an ``execution_id`` is a server error.
"""

from __future__ import annotations

import base64
import json

import msgspec
import schemathesis


def _texts(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {str(k): _texts(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_texts(v) for v in value]
    return value


def _msgpackable(value):
    # MessagePack has no integers past 64 bits: send those as floats (invalid either way)
    if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**64:
        return float(value)
    if isinstance(value, dict):
        return {k: _msgpackable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_msgpackable(v) for v in value]
    return value


@schemathesis.serializer("application/msgpack")
def _to_msgpack(ctx, value):
    return {"data": msgspec.msgpack.encode(_msgpackable(value))}


@schemathesis.deserializer("application/msgpack")
def _from_msgpack(ctx, response):
    return _texts(msgspec.msgpack.decode(response.content))


@schemathesis.check
def spear_no_server_error(ctx, response, case):
    if response.status_code < 500:
        return None
    body = None
    try:
        ctype = response.headers.get("content-type", [""])
        ctype = ctype[0] if isinstance(ctype, list) else ctype
        body = (msgspec.msgpack.decode(response.content) if "msgpack" in ctype
                else json.loads(response.content))
    except Exception:
        pass
    if isinstance(body, dict) and body.get("execution_id"):
        return None  # an execution's outcome, mapped to its status
    raise AssertionError(f"server error {response.status_code}: {response.content[:300]!r}")
