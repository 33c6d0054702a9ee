"""Standard Webhooks signing: the spec's known answer, and an independent receiver agrees."""

from __future__ import annotations

import base64
import json
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from server.webhooks.signing import (
    TOLERANCE_S,
    SignatureError,
    new_message_id,
    new_secret,
    sign,
    signed_headers,
    verify,
)

# libraries/python/tests/test_webhooks.py::test_sign_function in standard-webhooks/standard-webhooks
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_known_answer_vector() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIGNATURE


def test_prefix_is_optional() -> None:
    bare = SPEC_SECRET.removeprefix("whsec_")
    assert sign(bare, SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIGNATURE


def test_new_secret_is_prefixed_base64_of_enough_bytes() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert 24 <= len(base64.b64decode(secret.removeprefix("whsec_"))) <= 64
    assert new_secret() != secret


def test_new_message_id_has_prefix_no_dot_and_is_unique() -> None:
    ids = {new_message_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("msg_") and "." not in i for i in ids)


def test_headers_verify_with_the_reference_library() -> None:
    secret, msg_id, now = new_secret(), new_message_id(), int(time.time())
    body = json.dumps({"type": "conversation.completed", "data": {"id": "c1"}}).encode()
    headers = signed_headers(secret, msg_id, now, body)
    assert headers["webhook-id"] == msg_id
    assert headers["webhook-timestamp"] == str(now)
    assert Webhook(secret).verify(body, headers) == json.loads(body)


def test_reference_library_rejects_a_tampered_body() -> None:
    secret, now = new_secret(), int(time.time())
    headers = signed_headers(secret, new_message_id(), now, b'{"amount": 1}')
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"amount": 9}', headers)


def test_rotation_header_verifies_with_either_secret() -> None:
    old, new, now = new_secret(), new_secret(), int(time.time())
    body = b'{"rotating": true}'
    headers = signed_headers([old, new], new_message_id(), now, body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(body, headers, json_parse=False)
        verify(secret, headers, body, now=now)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_our_verify_accepts_and_rejects_like_a_receiver() -> None:
    secret, now = new_secret(), 1_700_000_000
    body = b"{}"
    headers = signed_headers(secret, "msg_1", now, body)
    verify(secret, headers, body, now=now + TOLERANCE_S)
    verify(secret, {k.upper(): v for k, v in headers.items()}, body, now=now)
    for bad_now in (now + TOLERANCE_S + 1, now - TOLERANCE_S - 1):
        with pytest.raises(SignatureError, match="from now"):
            verify(secret, headers, body, now=bad_now)
    with pytest.raises(SignatureError, match="no matching"):
        verify(secret, headers, b"{ }", now=now)
    with pytest.raises(SignatureError, match="no matching"):
        verify(new_secret(), headers, body, now=now)
    with pytest.raises(SignatureError, match="missing"):
        verify(secret, {"webhook-id": "msg_1"}, body, now=now)
    with pytest.raises(SignatureError, match="Unix seconds"):
        verify(secret, {**headers, "webhook-timestamp": "soon"}, body, now=now)


def test_every_retry_gets_a_fresh_signature_for_the_same_id() -> None:
    secret, body = new_secret(), b"{}"
    first = signed_headers(secret, "msg_same", 1000, body)
    retry = signed_headers(secret, "msg_same", 1005, body)
    assert first["webhook-id"] == retry["webhook-id"]
    assert first["webhook-signature"] != retry["webhook-signature"]


@pytest.mark.parametrize(
    ("secret", "msg_id", "timestamp"),
    [
        ("whsec_not base64!", "msg_1", 1),
        ("whsec_" + base64.b64encode(b"short").decode(), "msg_1", 1),
        (SPEC_SECRET, "msg.1", 1),
        (SPEC_SECRET, "", 1),
        (SPEC_SECRET, "msg_1", -1),
    ],
    ids=["not-base64", "too-short", "dot-in-id", "empty-id", "negative-ts"],
)
def test_sign_refuses_bad_input(secret: str, msg_id: str, timestamp: int) -> None:
    with pytest.raises(ValueError):
        sign(secret, msg_id, timestamp, b"{}")


def test_signed_headers_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="at least one"):
        signed_headers([], "msg_1", 1, b"{}")
