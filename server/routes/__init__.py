"""HTTP route blueprints, one per surface, and the decorator that makes a route part of the API
contract (:func:`operation`: auth, typed query and body, OpenAPI)."""

from server.routes._contract import (
    Auth as Auth,
    Operation as Operation,
    operation as operation,
    parse_body as parse_body,
    parse_query as parse_query,
)

__all__ = ["Auth", "Operation", "operation", "parse_body", "parse_query"]
