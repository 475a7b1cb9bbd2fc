"""Turning an HTTP request into the flat ``{name: value}`` strings the core checks.

Accepted: the query string (any method), and for POST a body that is form data
(``application/x-www-form-urlencoded``, the default when no type is given,
or ``multipart/form-data`` with text fields only) or a flat JSON object whose values
are strings (integers are taken as their decimal text, so ``"ts": 1700000000`` works;
``null`` as empty). Everything is read as UTF-8, whatever a ``charset`` parameter says.
A name given twice with different values is refused, wherever the two come from.
Works on the raw ASGI scope and receive channel: the partner API is the hot path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

import msgspec
from litestar.types import Receive, Scope
from multipart import MultipartError, MultipartSegment, PushMultipartParser, parse_options_header

from core.errors import ErrorCode, TopupError

MAX_PARAMETERS = 64
MAX_BODY_BYTES = 64 * 1024

# A flat object: anything nested, a float or a bool fails validation at its own level,
# so a hostile 5,000-deep document is refused at depth 1, never recursed into.
_FlatJson = dict[str, str | int | None]
_decode_flat_json = msgspec.json.Decoder(_FlatJson).decode


class ClientDisconnected(Exception):
    """The client went away before its request body arrived: routine, and nobody to answer."""


def _undecodable(detail: str) -> TopupError:
    return TopupError(ErrorCode.UNDECODABLE_BODY, f"请求无法解析: {detail}")


async def read_params(scope: Scope, receive: Receive) -> dict[str, str]:
    query = scope.get("query_string", b"")
    pairs = _query_pairs(query) if query else []
    if scope["method"] == "POST":
        pairs += _body_pairs(_content_type(scope), await read_body(receive))
    return _merge(pairs)


def _content_type(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.decode("latin-1")
    return ""


async def read_body(receive: Receive) -> bytes:
    """The whole body, at most ``MAX_BODY_BYTES``; ``ClientDisconnected`` if it never ends."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
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
        return _urlencoded_pairs(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _undecodable("查询字符串不是 UTF-8 URL 编码") from exc


def _urlencoded_pairs(raw: bytes) -> list[tuple[str, str]]:
    """``parse_qsl(raw.decode(), keep_blank_values=True, errors="strict")``, at under half
    its cost (profiled: a tenth of a status query): only a part holding ``+`` or ``%`` is
    rewritten, and each run of percent-escapes is decoded as UTF-8 in one step."""
    pairs = []
    for part in raw.decode("utf-8").split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if "%" in part or "+" in part:
            name, value = _unquote_plus(name), _unquote_plus(value)
        pairs.append((name, value))
    return pairs


# A run of percent-escapes, as unquote_to_bytes reads them (anything else stays as it is).
_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


def _unquote_plus(text: str) -> str:
    if "+" in text:
        text = text.replace("+", " ")
    if "%" in text:
        # Each run decoded on its own is the whole decoded at once: text between runs is
        # whole characters, so it can neither complete nor split a run's UTF-8 sequence.
        text = _ESCAPES.sub(_unescape_run, text)
    return text


def _unescape_run(run: re.Match[str]) -> str:
    # bytes.fromhex: one C call for a run, where unquote_to_bytes looks up each escape
    # in Python (a Chinese company name or carrier is one run of 12 to 30 escapes).
    return bytes.fromhex(run.group().replace("%", "")).decode("utf-8")


def _body_pairs(content_type: str, body: bytes) -> list[tuple[str, str]]:
    if not body.strip():
        return []
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type in ("", "application/x-www-form-urlencoded", "text/plain"):
        return _form_pairs(body)
    if media_type == "application/json" or media_type.endswith("+json"):
        return _json_pairs(body)
    if media_type == "multipart/form-data":
        return _multipart_pairs(content_type, body)
    raise _undecodable(
        f"不支持的 Content-Type {media_type}; 请使用 application/x-www-form-urlencoded, "
        "multipart/form-data 或 application/json"
    )


def _form_pairs(body: bytes) -> list[tuple[str, str]]:
    try:
        return _urlencoded_pairs(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _undecodable("表单数据不是 UTF-8 URL 编码") from exc


def _json_pairs(body: bytes) -> list[tuple[str, str]]:
    try:
        document = _decode_flat_json(body)
    except UnicodeDecodeError as exc:
        raise _undecodable("JSON 含有非 UTF-8 字节") from exc
    except msgspec.ValidationError as exc:
        raise _not_flat(body, exc) from exc
    except msgspec.DecodeError as exc:
        raise _undecodable(f"JSON 格式错误 ({exc})") from exc
    pairs, strings = [], 0
    for name, value in document.items():
        if type(value) is str:
            strings += 1
            pairs.append((name, value))
        else:
            pairs.append((name, _json_text(value)))
    # A repeated key is dropped by the decoder (last wins), and its quotes are gone with
    # it: every key and string value of the object brings two quotes to the raw body, so
    # when the count matches there was no repeat. Only a body with escaped quotes or a
    # repeat takes the exact (slower) look; this check costs a memchr-like scan.
    if body.count(b'"') != 2 * (len(document) + strings):
        _refuse_repeated_json_keys(body)
    return pairs


def _json_text(value: int | None) -> str:
    return "" if value is None else str(value)


def _refuse_repeated_json_keys(body: bytes) -> None:
    """The body is a valid flat object already (the decoder said so), so the standard
    library reads it without recursion, here only to see every key and value in order."""
    try:
        pairs = json.loads(body, object_pairs_hook=list)
    except ValueError as exc:  # not expected: the two parsers agree on valid JSON
        raise _undecodable(f"JSON 格式错误 ({exc})") from exc
    _merge((name, _json_text(value) if type(value) is not str else value) for name, value in pairs)


def _not_flat(body: bytes, exc: msgspec.ValidationError) -> TopupError:
    if not body.lstrip().startswith(b"{"):
        return _undecodable("JSON 顶层必须是对象")
    name = _first_non_text_name(body)
    where = f"参数 {name}" if name is not None else "JSON 参数"
    return TopupError(
        ErrorCode.INVALID_PARAMETER,
        f"{where} 必须是字符串 (或整数), 不能是对象, 数组, 小数或布尔值 ({exc})",
    )


def _first_non_text_name(body: bytes) -> str | None:
    """Which parameter to name in the refusal; None when that cannot be had cheaply
    (a deeply nested value, or an integer beyond 64 bits)."""
    try:
        document = msgspec.json.decode(body)
    except (ValueError, RecursionError):  # msgspec.DecodeError is a ValueError
        return None
    for name, value in document.items():
        if type(value) not in (str, int, type(None)):
            return name
    return None


def _multipart_pairs(content_type: str, body: bytes) -> list[tuple[str, str]]:
    boundary = parse_options_header(content_type)[1].get("boundary")
    if not boundary:
        raise _undecodable("multipart/form-data 缺少 boundary 参数")
    pairs: list[tuple[str, str]] = []
    segment: MultipartSegment | None = None
    chunks: list[bytes] = []
    try:
        with PushMultipartParser(boundary) as parser:
            for event in parser.parse(body):
                if isinstance(event, MultipartSegment):
                    segment, chunks = event, []
                    _refuse_file(segment)
                elif event is not None:
                    chunks.append(event)
                elif segment is not None:
                    pairs.append((segment.name or "", _part_text(segment, b"".join(chunks))))
        # Leaving the block closes the parser, which refuses a body cut short.
    except (MultipartError, UnicodeDecodeError) as exc:
        raise _undecodable(f"multipart/form-data 格式错误 ({str(exc)[:200]})") from exc
    return pairs


def _refuse_file(segment: MultipartSegment) -> None:
    if segment.filename is not None:
        raise TopupError(
            ErrorCode.INVALID_PARAMETER,
            f"参数 {segment.name} 是文件 ({segment.filename!r}); 只接受文本字段",
        )


def _part_text(segment: MultipartSegment, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _undecodable(f"multipart 字段 {segment.name} 不是 UTF-8 文本") from exc


def _merge(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params and params[name] != value:
            raise TopupError(ErrorCode.DUPLICATE_PARAMETER, f"参数 {name} 出现多次且取值不同")
        if "\x00" in value:
            # PostgreSQL cannot store it: refused here rather than as a storage failure.
            raise TopupError(ErrorCode.INVALID_PARAMETER, f"参数 {name} 含有 NUL 字符")
        params[name] = value
    if len(params) > MAX_PARAMETERS:
        raise TopupError(ErrorCode.INVALID_PARAMETER, f"参数过多: 最多 {MAX_PARAMETERS} 个")
    return params
