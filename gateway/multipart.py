"""A small multipart/form-data parser for uploads, sized to what the gateway accepts.

Werkzeug's parser compiles two regular expressions per request (the boundary is part of them,
so Python's regex cache misses every time): that alone cost about 2 ms of CPU per upload,
more than everything else the gateway does for a job. Splitting the body on the boundary with
``bytes`` methods (C speed) does the same job for bodies already bounded by MAX_UPLOAD_MB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flask import Request

from digitflow.errors import InvalidRequestError

_DISPOSITION = re.compile(rb"(?i)content-disposition:\s*form-data\s*;(.*)")
_PARAM = re.compile(rb'(?i)\b(name|filename)\s*=\s*"([^"]*)"|\b(name|filename)\s*=\s*([^;\s]+)')
MAX_FIELD_BYTES = 1024
# Bounds checked before any part is parsed: a body of many tiny parts or of huge part headers
# costs parsing time however small it is. Parts: the images (MAX_PARTS) plus a few text fields.
MAX_PART_HEADER_BYTES = 4096
EXTRA_PARTS = 4


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    data: bytes


def boundary_of(content_type_params: dict[str, str]) -> bytes:
    boundary = content_type_params.get("boundary", "")
    if not 0 < len(boundary) <= 200:  # RFC 2046 says 70; some clients send longer ones
        raise InvalidRequestError("multipart body without a valid boundary")
    try:
        return boundary.encode("ascii")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError("multipart boundary must be ASCII") from exc


def parse_multipart(body: bytes, boundary: bytes, max_parts: int = 64) -> list[Part]:
    """Parts of a multipart body; raises InvalidRequestError when it is malformed, has more
    than ``max_parts`` + EXTRA_PARTS parts, or a part's headers pass MAX_PART_HEADER_BYTES."""
    delimiter = b"--" + boundary
    if body.count(delimiter) > max_parts + EXTRA_PARTS + 1:  # counted at C speed, before splitting
        raise InvalidRequestError(f"too many multipart parts (at most {max_parts + EXTRA_PARTS})")
    chunks = body.split(delimiter)
    # chunks[0] is the preamble; a well-formed body ends with the close delimiter "--".
    if len(chunks) < 2 or not chunks[-1].startswith(b"--"):
        raise InvalidRequestError("malformed multipart body: it does not end with the closing boundary")
    parts = []
    for chunk in chunks[1:-1]:
        if not chunk.startswith(b"\r\n"):
            raise InvalidRequestError("malformed multipart body: a boundary is not followed by a line break")
        head_end = chunk.find(b"\r\n\r\n", 2, MAX_PART_HEADER_BYTES + 6)
        if head_end < 0 and len(chunk) > MAX_PART_HEADER_BYTES:
            raise InvalidRequestError(f"multipart part headers exceed {MAX_PART_HEADER_BYTES} bytes")
        if head_end < 0:
            raise InvalidRequestError("malformed multipart body: a part has no header end")
        if not chunk.endswith(b"\r\n"):
            raise InvalidRequestError("malformed multipart body: a part is not terminated by a line break")
        name, filename = _disposition(chunk[2:head_end])
        parts.append(Part(name, filename, chunk[head_end + 4 : -2]))
    return parts


def _disposition(headers: bytes) -> tuple[str, str | None]:
    for line in headers.split(b"\r\n"):
        match = _DISPOSITION.match(line)
        if match is None:
            continue
        params: dict[bytes, bytes] = {}
        for m in _PARAM.finditer(match.group(1)):
            key = (m.group(1) or m.group(3)).lower()
            params[key] = m.group(2) if m.group(1) else m.group(4)
        if b"name" not in params:
            break
        name = params[b"name"].decode("utf-8", "replace")
        filename = params.get(b"filename")
        return name, filename.decode("utf-8", "replace") if filename is not None else None
    raise InvalidRequestError("malformed multipart body: a part has no form-data name")


def text_field(parts: list[Part], name: str) -> str | None:
    """The first text field called ``name``, if any (bounded in size, UTF-8)."""
    for part in parts:
        if part.name == name and part.filename is None:
            if len(part.data) > MAX_FIELD_BYTES:
                raise InvalidRequestError(f"form field {name!r} is too long")
            return part.data.decode("utf-8", "replace").strip()
    return None


def request_parts(request: Request, max_parts: int = 64) -> list[Part]:
    """The parts of a multipart request, parsed once per request ([] for other bodies)."""
    cached: list[Part] | None = getattr(request, "_digitflow_parts", None)
    if cached is None:
        cached = []
        if request.mimetype == "multipart/form-data":
            body = request.get_data(cache=False)
            cached = parse_multipart(body, boundary_of(request.mimetype_params), max_parts)
        request._digitflow_parts = cached  # type: ignore[attr-defined]
    return cached
