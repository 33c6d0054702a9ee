"""One decorator per route that authenticates, parses and documents: :func:`operation`.

A route declares who may call it, the model of its JSON body and of its query string, and the
statuses it answers; the decorator enforces that declaration (in that order: auth, query, body,
so an unauthenticated caller learns nothing about the payload) and records it for the OpenAPI
document (:mod:`server.routes.docs`), which quart-schema's generator builds from the same
models. A route without the decorator is not part of the API contract (pages, ``/metrics``).

Errors have one shape (:func:`server.errors.error_body`) and name the field:

* 400 ``invalid_json``: the body is not JSON (malformed, unpaired surrogate, nested > 200) or not
  an object; 400 ``invalid_parameter``: a query parameter is invalid;
* 413 ``request_entity_too_large``: over ``--http-max-body-bytes``;
* 422 ``invalid_field``: a body field is missing, unknown, of the wrong type or out of range.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails
from quart import Response, request
from quart_schema import DataSource
from quart_schema.validation import (
    QUART_SCHEMA_QUERYSTRING_ATTRIBUTE,
    QUART_SCHEMA_REQUEST_ATTRIBUTE,
    QUART_SCHEMA_RESPONSE_ATTRIBUTE,
)

from server.errors import ApiError
from server.routes.deps import current_user, require_admin

__all__ = [
    "OPERATION_ATTRIBUTE",
    "Auth",
    "Operation",
    "operation",
    "parse_body",
    "parse_query",
]

Auth = Literal["none", "user", "admin"]
Handler = Callable[..., Awaitable[Response]]
H = TypeVar("H", bound=Handler)

#: Attribute of a view function that carries its :class:`Operation`.
OPERATION_ATTRIBUTE: Final = "_trioscribe_operation"

#: Error statuses every operation can answer: draining / overloaded (``Retry-After``).
_ALWAYS: Final = frozenset({503})
_BY_AUTH: Final[Mapping[Auth, frozenset[int]]] = {
    "none": frozenset(),
    "user": frozenset({401, 429}),
    "admin": frozenset({401, 403}),
}
_EMPTY_BODY: Final = "the request body must be a JSON object"
_NOT_AN_OBJECT: Final = frozenset({"dict_type", "model_type", "model_attributes_type"})


@dataclass(frozen=True, slots=True)
class Operation:
    """What a route declares about itself.

    Attributes:
        auth: ``user`` (an API token; the handler gets ``user``), ``admin`` (the admin token),
            or ``none``.
        body: the JSON body's model (the handler gets ``body``), or ``None`` for no body.
        body_required: an empty body is a 400 (else it means ``{}``).
        query: the query string's model (the handler gets ``query``), or ``None``.
        responses: success status -> response model (``None``: no body, e.g. 204).
        errors: every error status the route can answer (auth, parsing and 503 included).
        headers: response headers by status: name -> description.
        operation_id: a unique name (the view function's name by default).
        tags: documentation groups.
    """

    auth: Auth
    body: Any
    body_required: bool
    query: type[BaseModel] | None
    responses: Mapping[int, Any]
    errors: frozenset[int]
    headers: Mapping[int, Mapping[str, str]]
    operation_id: str
    tags: tuple[str, ...]


def operation(
    *,
    auth: Auth,
    responses: Mapping[int, Any],
    body: Any = None,
    body_required: bool = True,
    query: type[BaseModel] | None = None,
    errors: Iterable[int] = (),
    headers: Mapping[int, Mapping[str, str]] | None = None,
    operation_id: str | None = None,
    tags: Iterable[str] = (),
) -> Callable[[H], H]:
    """Declare, enforce and document a route (see :class:`Operation` for the arguments).

    The handler is called with its path parameters plus ``user``, ``query`` and ``body`` as
    declared. Cancellation passes through untouched; nothing is owned here.
    """
    statuses = set(errors) | _ALWAYS | _BY_AUTH[auth]
    if query is not None:
        statuses.add(400)
    if body is not None:
        statuses |= {400, 413, 422}
    adapter: TypeAdapter[Any] | None = TypeAdapter(body) if body is not None else None
    min_fields = _min_fields(body)

    def decorate(func: H) -> H:
        declared = Operation(
            auth=auth,
            body=body,
            body_required=body_required,
            query=query,
            responses=dict(responses),
            errors=frozenset(statuses),
            headers=dict(headers or {}),
            operation_id=operation_id or func.__name__,
            tags=tuple(tags),
        )

        @functools.wraps(func)
        async def view(**path: Any) -> Response:
            kwargs: dict[str, Any] = dict(path)
            if auth == "user":
                kwargs["user"] = await current_user()
            elif auth == "admin":
                require_admin()
            if query is not None:
                kwargs["query"] = parse_query(query)
            if adapter is not None:
                kwargs["body"] = await parse_body(
                    adapter, required=body_required, min_fields=min_fields
                )
            return await func(**kwargs)

        _document(view, declared)
        return view  # type: ignore[return-value]

    return decorate


def _min_fields(body: Any) -> int:
    """``minProperties`` of a partial-update model (read from its config, not its schema: the
    schema is built only when ``/openapi.json`` is first asked for)."""
    extra = getattr(body, "__pydantic_config__", {}).get("json_schema_extra")
    return int(extra.get("minProperties", 0)) if isinstance(extra, dict) else 0


def _document(view: Callable[..., object], declared: Operation) -> None:
    """Record ``declared`` where quart-schema's OpenAPI generator (and ours) will look."""
    setattr(view, OPERATION_ATTRIBUTE, declared)
    if declared.query is not None:
        setattr(view, QUART_SCHEMA_QUERYSTRING_ATTRIBUTE, declared.query)
    if declared.body is not None:
        setattr(view, QUART_SCHEMA_REQUEST_ATTRIBUTE, (declared.body, DataSource.JSON))
    documented = {s: (m, None) for s, m in declared.responses.items() if m is not None}
    setattr(view, QUART_SCHEMA_RESPONSE_ATTRIBUTE, documented)


async def parse_body(adapter: TypeAdapter[Any], *, required: bool, min_fields: int = 0) -> Any:
    """The request's JSON body validated by ``adapter`` (400/413/422 :class:`ApiError`).

    The raw bytes go straight to pydantic's JSON parser: malformed JSON, unpaired surrogates
    and nesting deeper than 200 levels fail there, never in a handler or the store.
    """
    data = await request.get_data(as_text=False)
    raw = data.encode() if isinstance(data, str) else data
    if not raw.strip():
        if required:
            raise ApiError(400, "invalid_json", _EMPTY_BODY)
        raw = b"{}"
    try:
        value = adapter.validate_json(raw)
    except ValidationError as exc:
        error = exc.errors(include_input=False, include_url=False)[0]
        raise _surrogate_error(raw, error) or _body_error(error) from None
    if min_fields and isinstance(value, dict) and len(value) < min_fields:
        raise ApiError(422, "invalid_field", "no fields to update")
    return value


def _surrogate_error(raw: bytes, error: ErrorDetails) -> ApiError | None:
    """A 422 naming the field if the JSON only failed on an unpaired surrogate escape.

    pydantic's parser stops at the escape; the standard parser (run on this error path only,
    on a body already bounded by ``--http-max-body-bytes``) keeps it, so we can say where.
    """
    if error["type"] != "json_invalid" or "escape" not in error["msg"]:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    path = _surrogate_path(value)
    if path is None:
        return None
    message = f"{path or 'body'}: contains an unpaired surrogate (\\ud800-\\udfff), not text"
    return ApiError(422, "invalid_field", message)


def _surrogate_path(value: object) -> str | None:
    """The dotted path of the first string (key or value) with an unpaired surrogate."""
    stack: list[tuple[str, object]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if _has_surrogate(item):
                return path
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                child_path = f"{path}.{key}" if path else str(key)
                if _has_surrogate(key):
                    return child_path
                stack.append((child_path, child))
        elif isinstance(item, list):
            stack.extend(
                (f"{path}.{i}" if path else str(i), c) for i, c in reversed(list(enumerate(item)))
            )
    return None


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def _body_error(error: ErrorDetails) -> ApiError:
    if error["type"] == "json_invalid":
        return ApiError(400, "invalid_json", f"malformed JSON: {error['msg']}")
    if not error["loc"] and error["type"] in _NOT_AN_OBJECT:
        return ApiError(400, "invalid_json", _EMPTY_BODY)
    return ApiError(422, "invalid_field", f"{_where(error)}: {error['msg']}")


def parse_query(model: type[BaseModel]) -> Any:
    """The request's query string validated by ``model`` (400 :class:`ApiError`).

    Unknown parameters are ignored; a list-typed field takes every occurrence, any other
    field exactly one.
    """
    values: dict[str, object] = {}
    for name, field in model.model_fields.items():
        given = request.args.getlist(name)
        if not given:
            continue
        if _is_list(field.annotation):
            values[name] = given
        elif len(given) > 1:
            raise ApiError(400, "invalid_parameter", f"{name}: must be given once")
        else:
            values[name] = given[0]
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors(include_input=False, include_url=False)[0]
        raise ApiError(400, "invalid_parameter", f"{_where(error)}: {error['msg']}") from None


def _is_list(annotation: Any) -> bool:
    if get_origin(annotation) is list:
        return True
    return any(get_origin(arg) is list for arg in get_args(annotation))


def _where(error: ErrorDetails) -> str:
    """The field path of a pydantic error (``triggers.0``), or ``body``."""
    return ".".join(str(part) for part in error["loc"]) or "body"
