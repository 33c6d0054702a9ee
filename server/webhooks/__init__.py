"""Outbound webhooks as domain code: Standard Webhooks signing, the SSRF guard, the outbox and
its repository, durable delivery and realtime dispatch. Their HTTP API lives in
:mod:`server.routes.webhooks`; :mod:`server.compose` wires them into a server run."""
