"""Turning an HTTP request into the flat ``{name: value}`` strings the core checks.

Accepted: the query string (any method), and for POST a body that is form data
(``application/x-www-form-urlencoded``, the default when no type is given,
or ``multipart/form-data``) or a JSON object whose values are strings (numbers are
taken as their decimal text, so ``"ts": 1700000000`` works).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl

import msgspec
from litestar import Request

from core.errors import ErrorCode, TopupError

MAX_PARAMETERS = 64


def _undecodable(detail: str) -> TopupError:
    return TopupError(ErrorCode.UNDECODABLE_BODY, f"请求无法解析: {detail}")


async def request_params(request: Request) -> dict[str, str]:
    pairs = list(_query_pairs(request.scope.get("query_string", b"")))
    if request.method == "POST":
        pairs.extend(await _body_pairs(request))
    return _merge(pairs)


def _query_pairs(raw: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise _undecodable("查询字符串不是 UTF-8 URL 编码") from exc


async def _body_pairs(request: Request) -> list[tuple[str, str]]:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        form = await request.form()
        return [(name, value) for name, value in form.multi_items() if isinstance(value, str)]
    body = await request.body()
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
