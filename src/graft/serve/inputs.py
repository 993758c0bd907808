"""A /predict request -> the model's inputs and what each answer echoes back, or a BadRequest
(a 4xx with a one-line message). Several `file` parts are answered each, in order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ..errors import DataError

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_INPUTS = 256  # texts (or files) in one request
ECHO_CHARS = 200  # a text's echo in the answer: its first 200 characters, then "..."
HOW_TO_SEND = {"file": 'an image as the multipart field "file"', "texts": 'JSON {"texts": ["a text", ...]}'}


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def echo(item: Any) -> Any:
    """What an answer's "input" shows: a text cut at ECHO_CHARS characters (a pair: each text)."""
    if isinstance(item, str):
        return item if len(item) <= ECHO_CHARS else item[:ECHO_CHARS] + "..."
    return [echo(part) for part in item] if isinstance(item, list | tuple) else item


def takes_pairs(model: Any) -> bool:
    return bool(getattr(model.preprocessing, "pairs", False))


async def read_request(request: Any, model: Any, max_upload_bytes: int) -> tuple[list[Any], list[Any]]:
    """(inputs, echoes) of a /predict request: JSON texts or multipart images."""
    size = int(request.headers.get("content-length") or 0)
    if size > max_upload_bytes:
        raise BadRequest(413, f"upload of {size} bytes is over the {max_upload_bytes}-byte limit")
    request = capped(request, max_upload_bytes)  # a body sent without content-length (chunked) too
    kind = request.headers.get("content-type", "")
    takes = model.modality.request_field
    wrong = f"this {model.modality.name} model takes {HOW_TO_SEND[takes]}"
    if kind.startswith("application/json"):
        body = _json_body(await request.body())
        if takes != "texts":
            raise BadRequest(400, wrong)
        texts = body.get("texts") if isinstance(body, dict) else None
        check_texts(model, texts)
        return [tuple(t) if isinstance(t, list) else t for t in texts], [echo(t) for t in texts]
    if not kind.startswith("multipart/form-data"):
        raise BadRequest(415, 'send an image as the multipart field "file", or JSON {"texts": [...]}')
    if takes != "file":
        raise BadRequest(400, wrong)
    return await _uploads(request, model, max_upload_bytes)


def capped(request: Any, limit: int) -> Any:
    """`request` whose body reads raise a 413 BadRequest once more than `limit` bytes arrived,
    whatever its headers say: the body is never held past the limit."""
    from starlette.requests import Request

    receive, seen = request.receive, 0

    async def receive_capped() -> Any:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise BadRequest(413, f"the request body is over the {limit}-byte limit")
        return message

    return Request(request.scope, receive_capped)


async def drain(request: Any, limit: int) -> None:
    """Read and drop a refused request's body, up to `limit` bytes: a server that closes a
    connection while the client is still sending resets it, and the client sees a broken
    connection instead of the answer (a 503 must reach it)."""
    from starlette.requests import ClientDisconnect

    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                return
    except ClientDisconnect:
        return


def _json_body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise BadRequest(400, f"the JSON body does not parse ({err.msg})") from None
    except (RecursionError, UnicodeDecodeError):
        raise BadRequest(400, "the JSON body is nested too deep or is not UTF-8") from None


def check_texts(model: Any, texts: Any) -> None:
    """A non-empty list of texts (or, for a model trained on pairs, of [first, second] pairs),
    none empty, at most MAX_INPUTS."""
    pairs = takes_pairs(model)
    shape = '[["first", "second"], ...]' if pairs else '["a text", ...]'
    if not isinstance(texts, list) or not texts or not all(model.modality.accepts(t) for t in texts):
        what = "sentence pairs" if pairs else "strings"
        raise BadRequest(400, f'send {{"texts": {shape}}}: a non-empty list of {what}')
    if len(texts) > MAX_INPUTS:
        raise BadRequest(413, f"{len(texts)} texts in one request; at most {MAX_INPUTS}")
    for i, text in enumerate(texts):
        if pairs and isinstance(text, str):
            raise BadRequest(400, f'texts[{i}] is one text; this model takes sentence pairs: send {shape}')
        parts = [text] if isinstance(text, str) else list(text)
        if any(not part.strip() for part in parts):
            raise BadRequest(400, f"texts[{i}] is empty: send texts with words in them")


async def _uploads(request: Any, model: Any, max_upload_bytes: int) -> tuple[list[Any], list[Any]]:
    """Each multipart `file` part, decoded in a thread (not on the event loop), in order."""
    form = await request.form()
    uploads = [u for u in form.getlist("file") if hasattr(u, "read")]
    if not uploads:
        raise BadRequest(400, 'no multipart field "file" with an image')
    if len(uploads) > MAX_INPUTS:
        raise BadRequest(413, f"{len(uploads)} files in one request; at most {MAX_INPUTS}")
    inputs = []
    for upload in uploads:
        data = await upload.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise BadRequest(413, f"the image is over the {max_upload_bytes}-byte limit")
        name = upload.filename or "the upload"
        try:
            read = model.modality.read_upload  # decoded and resized here, in a thread, off the batch
            inputs.append(await asyncio.to_thread(read, data, name, model.preprocessing))
        except DataError as err:
            raise BadRequest(415, str(err)) from None
    return inputs, [u.filename for u in uploads]
