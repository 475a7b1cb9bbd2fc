"""The partner API's OpenAPI 3.1 description, published at ``/schema/openapi.json`` and
rendered by Swagger UI at ``/schema``.

The partner calls are raw ASGI handlers (service/partner_api.py: half the framework's
cost per request), which Litestar's generator cannot see. So their part of the document
is built here, once at start, from the same Structs that define them: the parameters
from core/partner_params.py (whence core/partner.py derives its checks), the answers
from service/payloads.py (what the handlers encode), the errorCodes from
core/errors.py. ``publish`` adds it to the OpenAPI object Litestar generates for the
rest of the app, so every view of the schema (JSON, the page) shows the one document.
tests/test_contract.py proves that the handlers answer as this document says.

Swagger UI's files come with the service (the swagger-ui-py package), not from a CDN:
many partner networks, and this service's own hosts, reach none.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Final

import msgspec
from litestar import get
from litestar.exceptions import NotFoundException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, OpenAPI, SecurityScheme, Tag
from litestar.params import FromPath
from litestar.response import File
from litestar.router import Router

from core.errors import ERROR_DOCS, ErrorCode
from core.partner_params import Sign
from service import payloads
from service.params import MAX_BODY_BYTES
from service.partner_api import CALLS, PartnerCall

TITLE = "topup partner API"
VERSION = "1.0.0"
SCHEMA_PATH = "/schema"
ASSETS = f"{SCHEMA_PATH}/assets"

# ASCII tag names: generators make module names of them.
TAG = "Partner API"
SEED_TAG = "Seed paths"
# The seed's Chinese path of a call is the same operation under its own, stable id.
SEED_PATH_SUFFIX = "Zh"

# JSON first: generators (openapi-generator) build the call's arguments from the first.
POST_MEDIA_TYPES = (
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
)
JSON = "application/json"

SIGNATURE_RULE = f"""\
1. Take every request parameter except `sign` whose value is not empty (parameters this
   document does not list are signed too). 取除 sign 外所有非空参数.
2. Sort them by name in byte order (upper case first: `Supplier` sorts before
   `access_token`). 按参数名字节序排序.
3. Join them as `name=value` with `&`, the raw values (not URL-encoded), in UTF-8.
   以 & 连接 name=value, 使用原始值 (不做 URL 编码).
4. `sign` = hex HMAC-SHA256 of that string keyed with the app's secret; apps registered
   with sign type `md5` (legacy) use the uppercase hex MD5 of the string followed by
   `&key=SECRET`. The service compares `sign` case-insensitively.

`ts` is Unix time in seconds or milliseconds, within 300 seconds of the server's clock.

Worked example (the README's "Signature" section; tests/test_signing.py pins it): secret
`9b2f4c6e8a1d3f5b7c9e0a2d4f6b8c1e`, string to sign

`Supplier=中国移动&access_token=1764072000.3fa85f64a1b2.6c1d0e0b9a6f4d2e8c7b5a3f1e9d7c5b3a1f0e2d&appID=demo&company=彩生活&cstmOrderName=物业缴费&cstmOrderNo=test1234567&phoneNo=13800138000&productId=YD10&ts=1764064800`

gives `sign` = `{Sign.__metadata__[0].examples[0]}` (hmac-sha256)
or `42826BF5E89371EC5A1D7E2090FE1262` (md5). `topup sign -v --secret SECRET name=value ...`
prints the string to sign and the signature for any parameters."""

DESCRIPTION = f"""\
话费充值合作方接口 / The partner API of topup: top up a mainland China phone number, query
the order, the balance and the products. Every call is signed.

**Answers / 应答.** Every answer is the seed's envelope, JSON in UTF-8: `code` "0" with the
call's `data` (schema `Success[...]`), or `code` "1" with `data` "" and a machine-readable
`errorCode` (schema `Refusal`; schema `ErrorCode` lists every code with its meaning).
Business outcomes, refusals included, are HTTP 200: branch on `code`, then `errorCode`;
`message` says in Chinese what exactly is wrong. Protocol errors carry the same envelope:
404 (no such path), 405 (wrong method), 408 (request not received in full in time), 413
(body over {MAX_BODY_BYTES // 1024} KiB), 429 (`RATE_LIMITED`, wait `Retry-After`
seconds), 500 (unexpected) and 503 (storage unavailable: send again with the same
`cstmOrderNo`).

**Parameters / 参数.** All values are strings, each name at most once (a name given twice
with different values: `DUPLICATE_PARAMETER`; a NUL character: `INVALID_PARAMETER`). GET
calls take them in the query string. POST calls take form data
(`application/x-www-form-urlencoded`, also when no Content-Type is given, or
`multipart/form-data` with text fields), a flat JSON object of strings (integers are taken
as their text), the query string, or any mix of body and query string. A required
parameter sent empty counts as missing. Each parameter's `maxLength` holds whichever call
it is sent to.

**Signature / 签名** (the `signature` security scheme: OpenAPI cannot express an HMAC, so
the rule is written out here; generated clients take `sign` as an argument):

{SIGNATURE_RULE}
"""


def openapi_config() -> OpenAPIConfig:
    """The document's frame (title, description, tags, the signature scheme) and its one
    renderer; ``publish`` adds the partner calls once the app is built."""
    return OpenAPIConfig(
        title=TITLE,
        version=VERSION,
        description=DESCRIPTION,
        path=SCHEMA_PATH,
        tags=[
            Tag(name=TAG, description="合作方接口 / The five signed calls"),
            Tag(name=SEED_TAG, description="中文路径 / The same calls at the seed's paths"),
        ],
        components=Components(
            security_schemes={
                "signature": SecurityScheme(
                    type="apiKey",
                    name="sign",
                    security_scheme_in="query",
                    description=(
                        "签名 / A signature computed for each request, not a static key, "
                        "so no operation lists it as its `security`: every operation has "
                        "`sign` among its parameters (query string or body).\n\n" + SIGNATURE_RULE
                    ),
                )
            }
        ),
        render_plugins=[LocalSwaggerUI()],
    )


def publish(openapi: OpenAPI) -> None:
    """Add the partner calls, their Structs and their answers to Litestar's document."""
    document = partner_document()
    openapi.paths = {**(openapi.paths or {}), **document["paths"]}
    components = openapi.components
    components.schemas = {**(components.schemas or {}), **document["components"]["schemas"]}
    components.responses = {
        **(components.responses or {}),
        **document["components"]["responses"],
    }


def partner_document() -> dict[str, Any]:
    """``paths`` and ``components`` (schemas, responses) of the partner calls, as JSON."""
    schemas = _schemas()
    paths: dict[str, Any] = {}
    for call in CALLS:
        english, *seed_paths = call.paths
        paths[english] = {call.method.lower(): _operation(call, call.operation_id, TAG, schemas)}
        for path in seed_paths:
            seed_id = call.operation_id + SEED_PATH_SUFFIX
            operation = _operation(call, seed_id, SEED_TAG, schemas)
            operation["description"] = (
                f"The seed's path of `{english}`.\n\n" + (operation["description"])
            )
            paths[path] = {call.method.lower(): operation}
    return {"paths": paths, "components": {"schemas": schemas, "responses": _responses()}}


# -- schemas -----------------------------------------------------------------------------


def _success(call: PartnerCall) -> Any:
    """The Struct of the call's success: the envelope with the call's data."""
    return payloads.Success[call.data]


def _schemas() -> dict[str, Any]:
    types = [call.params for call in CALLS]
    types += [_success(call) for call in CALLS]
    types.append(payloads.Refusal)
    _refs, schemas = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    schemas["ErrorCode"] = _error_codes(schemas["ErrorCode"])
    for schema in schemas.values():
        # A Struct's default ("") stands for "not sent" (a parameter) or "left out" (an
        # answer's field, omit_defaults): no value is ever assumed, so none is published.
        for field in schema.get("properties", {}).values():
            field.pop("default", None)
    return schemas


def _error_codes(schema: dict[str, Any]) -> dict[str, Any]:
    """Every errorCode with its meaning: in the description, and as the
    ``x-enum-descriptions`` that some generators put on the enum's members."""
    meanings = [f"- `{code}`: {ERROR_DOCS[ErrorCode(code)]}" for code in schema["enum"]]
    return {
        **schema,
        "type": "string",
        "description": schema.get("description", "") + "\n\n" + "\n".join(meanings),
        "x-enum-descriptions": [ERROR_DOCS[ErrorCode(code)] for code in schema["enum"]],
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _schema_name(struct: Any) -> str:
    """The component name msgspec gives a Struct (``Success[OrderStatus]`` is
    ``Success_OrderStatus_``)."""
    return msgspec.json.schema_components([struct], ref_template="{name}")[0][0]["$ref"]


# -- operations --------------------------------------------------------------------------


def _operation(
    call: PartnerCall, operation_id: str, tag: str, schemas: dict[str, Any]
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": call.summary,
        "description": call.description,
    }
    if call.method == "GET":
        operation["parameters"] = _query_parameters(schemas[_schema_name(call.params)])
    else:
        operation["description"] += (
            "\n\nThe parameters go in the body (any of the three media types) or in the "
            "query string, or some in each."
        )
        body_schema = _ref(_schema_name(call.params))
        operation["requestBody"] = {
            "required": True,
            "content": {media_type: {"schema": body_schema} for media_type in POST_MEDIA_TYPES},
        }
    one_of = getattr(call.params, "one_of", None)
    if one_of:
        # OpenAPI cannot require one of two query parameters: said here, and in their
        # descriptions.
        operation["x-exactly-one-of"] = list(one_of)
    operation["responses"] = _operation_responses(call)
    return operation


def _query_parameters(struct_schema: dict[str, Any]) -> list[dict[str, Any]]:
    """A GET call's parameters: its Struct's fields, each in the query string."""
    properties = struct_schema["properties"]
    required = set(struct_schema.get("required", ()))
    parameters = []
    for name, schema in properties.items():
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "description": schema.get("description", ""),
            "schema": schema,
        }
        if schema.get("examples"):
            parameter["example"] = schema["examples"][0]
        parameters.append(parameter)
    return parameters


def _operation_responses(call: PartnerCall) -> dict[str, Any]:
    answers: dict[str, Any] = {
        "200": {
            "description": (
                "成功或拒绝 / Success (code 0, the call's data) or a refusal (code 1, data "
                "empty, errorCode says why): branch on code, then errorCode"
            ),
            "content": {
                JSON: {
                    "schema": {
                        "oneOf": [_ref(_schema_name(_success(call))), _ref("Refusal")],
                    }
                }
            },
        },
        "408": {"$ref": "#/components/responses/RequestTimeout"},
        "429": {"$ref": "#/components/responses/RateLimited"},
        "500": {"$ref": "#/components/responses/InternalError"},
        "503": {"$ref": "#/components/responses/ServiceUnavailable"},
    }
    if call.method == "POST":  # only a POST's body is read
        answers["413"] = {"$ref": "#/components/responses/PayloadTooLarge"}
    return dict(sorted(answers.items()))


# name -> (its errorCode, what the response says)
_PROTOCOL_ERRORS: Final = {
    "NotFound": (ErrorCode.NOT_FOUND, "404: no API at this path"),
    "MethodNotAllowed": (ErrorCode.METHOD_NOT_ALLOWED, "405: not with this HTTP method"),
    "RequestTimeout": (
        ErrorCode.REQUEST_TIMEOUT,
        "408: the request did not arrive in full in time; nothing was accepted",
    ),
    "PayloadTooLarge": (
        ErrorCode.UNDECODABLE_BODY,
        f"413: the body is over {MAX_BODY_BYTES} bytes; nothing was accepted",
    ),
    "RateLimited": (
        ErrorCode.RATE_LIMITED,
        "429: too many requests; wait Retry-After seconds. Nothing was accepted",
    ),
    "InternalError": (
        ErrorCode.INTERNAL_ERROR,
        "500: an unexpected error; query with the same cstmOrderNo before sending again",
    ),
    "ServiceUnavailable": (
        ErrorCode.SERVICE_UNAVAILABLE,
        "503: storage unavailable, nothing was accepted; send again with the same cstmOrderNo",
    ),
}


def _responses() -> dict[str, Any]:
    """The protocol errors' answers: a Refusal, whose errorCode the description names
    (not as a narrowed schema: client generators cannot combine one with the enum)."""
    responses: dict[str, Any] = {}
    for name, (code, description) in _PROTOCOL_ERRORS.items():
        responses[name] = {
            "description": f"{description} (errorCode {code})",
            "content": {JSON: {"schema": _ref("Refusal")}},
        }
    responses["RateLimited"]["headers"] = {
        "Retry-After": {
            "description": "等待秒数 / seconds to wait before the next request",
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
        }
    }
    return responses


# -- the page ----------------------------------------------------------------------------

# The files of Swagger UI the page loads, from the swagger-ui-py package.
_ASSET_TYPES: Final = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def _swagger_ui_files() -> Path:
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed (a dependency in pyproject.toml)")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


class LocalSwaggerUI(SwaggerRenderPlugin):
    """Litestar's Swagger UI page at ``/schema``, its scripts and styles served by the
    service itself from ``/schema/assets``."""

    def __init__(self) -> None:
        super().__init__(
            js_url=f"{ASSETS}/swagger-ui-bundle.js",
            css_url=f"{ASSETS}/swagger-ui.css",
            standalone_preset_js_url=f"{ASSETS}/swagger-ui-standalone-preset.js",
            favicon=f"<link rel='icon' type='image/png' href='{ASSETS}/favicon-32x32.png'>",
            path="/",
        )
        self.files = _swagger_ui_files()
        missing = [name for name in _ASSET_TYPES if not (self.files / name).is_file()]
        if missing:
            raise RuntimeError(f"swagger-ui-py has no {', '.join(missing)} in {self.files}")

    def receive_router(self, router: Router) -> None:
        super().receive_router(router)
        files = self.files

        @get("/assets/{name:str}", include_in_schema=False, sync_to_thread=False)
        def asset(name: FromPath[str]) -> File:
            media_type = _ASSET_TYPES.get(name)
            if media_type is None:
                raise NotFoundException()
            return File(
                files / name,
                media_type=media_type,
                content_disposition_type="inline",
                headers={"cache-control": "public, max-age=86400"},
            )

        router.register(asset)
