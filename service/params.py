"""Turning an HTTP request into the flat ``{name: value}`` strings the core checks.

Accepted: the query string (any method), and for POST a body that is form data
(``application/x-www-form-urlencoded``, the default when no type is given,
or ``multipart/form-data``) or a JSON object whose values are strings (numbers are
taken as their decimal text, so ``"ts": 1700000000`` works). Works on the raw ASGI
scope and receive channel: the partner API is the hot path.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl

import msgspec
from litestar import Request
from litestar.types import Receive, Scope

from core.errors import ErrorCode, TopupError

MAX_PARAMETERS = 64
MAX_BODY_BYTES = 64 * 1024


def _undecodable(detail: str) -> TopupError:
    return TopupError(ErrorCode.UNDECODABLE_BODY, f"请求无法解析: {detail}")


async def read_params(scope: Scope, receive: Receive) -> dict[str, str]:
    query = scope.get("query_string", b"")
    pairs = _query_pairs(query) if query else []
    if scope["method"] == "POST":
        media_type = _media_type(scope)
        if media_type == "multipart/form-data":
            form = await Request(scope, receive).form()
            pairs += [(name, value) for name, value in form.multi_items() if isinstance(value, str)]
        else:
            pairs += _body_pairs(media_type, await _read_body(receive))
    return _merge(pairs)


def _media_type(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.decode("latin-1").split(";")[0].strip().lower()
    return ""


async def _read_body(receive: Receive) -> bytes:
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            # The body never arrived in full (the client left, or was cut off for being
            # too slow): what did arrive is not the request, so nothing is acted on.
            raise _undecodable("请求体不完整: 连接在请求体结束前已断开")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise TopupError(
                ErrorCode.UNDECODABLE_BODY, f"请求体过大: 最多 {MAX_BODY_BYTES} 字节", 413
            )
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _query_pairs(raw: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise _undecodable("查询字符串不是 UTF-8 URL 编码") from exc


def _body_pairs(media_type: str, body: bytes) -> list[tuple[str, str]]:
    if not body.strip():
        return []
    if media_type in ("", "application/x-www-form-urlencoded", "text/plain"):
        return _form_pairs(body)
    if media_type == "application/json" or media_type.endswith("+json"):
        return _json_pairs(body)
    raise _undecodable(
        f"不支持的 Content-Type {media_type}; 请使用 application/x-www-form-urlencoded "
        "或 application/json"
    )


def _form_pairs(body: bytes) -> list[tuple[str, str]]:
    try:
        text = body.decode("utf-8")
        return parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise _undecodable("表单数据不是 UTF-8 URL 编码") from exc


def _json_pairs(body: bytes) -> list[tuple[str, str]]:
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise _undecodable(f"JSON 格式错误 ({exc})") from exc
    if not isinstance(document, dict):
        raise _undecodable("JSON 顶层必须是对象")
    return [(name, _json_value(name, value)) for name, value in document.items()]


def _json_value(name: str, value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TopupError(ErrorCode.INVALID_PARAMETER, f"参数 {name} 必须是字符串")


def _merge(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params and params[name] != value:
            raise TopupError(ErrorCode.DUPLICATE_PARAMETER, f"参数 {name} 出现多次且取值不同")
        params[name] = value
    if len(params) > MAX_PARAMETERS:
        raise TopupError(ErrorCode.INVALID_PARAMETER, f"参数过多: 最多 {MAX_PARAMETERS} 个")
    return params
