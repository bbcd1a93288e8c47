"""Notifications against a real HTTP receiver on loopback, and through a real Prefect notification block saved in a
temporary Prefect server. A notification failure must never raise, and a webhook URL from the environment (a secret)
must never show up in a Delivery or a log line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import uuid
from datetime import datetime

import pytest

from llmdr.config import Notifications
from llmdr.notify import (
    Delivery,
    Notice,
    failback_notice,
    failover_notice,
    notify,
    verification_failed_notice,
)
from tests.support.loopback import Receiver
from tests.support.ports import free_port

TOKEN = "T0000/B0000/xoxb-s3cr3t-t0ken"


@pytest.fixture
def receiver():
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def silent_receiver():
    """Accepts connections and never answers. Yields (url, accepted connections)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    accepted: list[socket.socket] = []

    def accept():
        with contextlib.suppress(OSError):
            while True:
                accepted.append(sock.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook", accepted
    finally:
        sock.close()
        for c in accepted:
            c.close()


def _notice() -> Notice:
    return failover_notice("support-bot", "primary", "secondary", rto_s=4.2, reason="primary down (3/3 probes failed)",
                           ok=True, details={"first_failure": "2026-11-27T10:00:00Z", "flow_run": "abc123"})


# -- webhook -----------------------------------------------------------------------------------------------------


def test_webhook_posts_the_notice_as_json(receiver):
    notice = _notice()
    out = notify(Notifications(webhook_url=receiver.base + "/hook"), notice)
    assert out == [Delivery("webhook", True, "HTTP 200 from 127.0.0.1")]
    assert len(receiver.requests) == 1
    req = receiver.requests[0]
    assert req["path"] == "/hook"
    assert req["headers"]["Content-Type"].startswith("application/json")
    body = receiver.json()
    assert body["kind"] == "failover" and body["severity"] == "warning" and body["bundle"] == "support-bot"
    assert body["title"] == "llmdr: support-bot failed over primary -> secondary (RTO 4.2 s)"
    assert body["text"].startswith(body["title"] + "\n") and "Next:" in body["text"]
    assert body["data"]["rto_s"] == 4.2 and body["data"]["to_region"] == "secondary"
    assert body["data"]["details"]["flow_run"] == "abc123"
    assert datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")).utcoffset().total_seconds() == 0


def test_webhook_url_from_env_is_used_and_never_shown(receiver, caplog):
    caplog.set_level(logging.DEBUG)
    secret_url = f"{receiver.base}/services/{TOKEN}"
    settings = Notifications(webhook_url_env="LLMDR_TEST_HOOK")

    ok = notify(settings, _notice(), env={"LLMDR_TEST_HOOK": secret_url})
    assert ok == [Delivery("webhook", True, "HTTP 200 from $LLMDR_TEST_HOOK")]

    receiver.statuses = [500, 500]
    failed = notify(settings, _notice(), env={"LLMDR_TEST_HOOK": secret_url})
    assert [d.ok for d in failed] == [False]
    assert "HTTP 500" in failed[0].detail and "$LLMDR_TEST_HOOK" in failed[0].detail
    assert len(receiver.requests) == 3  # one success, then the failure retried once
    assert all(r["path"] == f"/services/{TOKEN}" for r in receiver.requests)
    assert "not delivered" in caplog.text  # the failure was logged...
    for text in (failed[0].detail, caplog.text):  # ...without the secret
        assert "s3cr3t" not in text and secret_url not in text


def test_a_single_5xx_is_retried_once_and_delivered(receiver):
    receiver.statuses = [503]
    out = notify(Notifications(webhook_url=receiver.base), _notice())
    assert out[0].ok and "2nd attempt" in out[0].detail
    assert len(receiver.requests) == 2


def test_a_4xx_is_not_retried(receiver):
    receiver.statuses = [404]
    out = notify(Notifications(webhook_url=receiver.base + f"/{TOKEN}"), _notice())
    assert not out[0].ok and "HTTP 404" in out[0].detail and "token" in out[0].detail
    assert "s3cr3t" not in out[0].detail
    assert len(receiver.requests) == 1


def test_receiver_down_is_reported_not_raised(caplog):
    url = f"http://127.0.0.1:{free_port()}/services/{TOKEN}"
    out = notify(Notifications(webhook_url_env="LLMDR_TEST_HOOK", timeout=2), _notice(),
                 env={"LLMDR_TEST_HOOK": url})
    assert len(out) == 1 and not out[0].ok
    assert "cannot connect to $LLMDR_TEST_HOOK" in out[0].detail and "after 2 attempts" in out[0].detail
    assert "s3cr3t" not in out[0].detail and "s3cr3t" not in caplog.text


def test_a_silent_receiver_is_given_up_on_after_the_timeout(silent_receiver):
    url, accepted = silent_receiver
    out = notify(Notifications(webhook_url=url, timeout=0.3), _notice())
    assert not out[0].ok and "timed out" in out[0].detail and "0.3 s" in out[0].detail
    assert len(accepted) == 1  # a timeout is not retried: the receiver may have the message already


def test_missing_env_var_says_what_to_set(receiver):
    out = notify(Notifications(webhook_url_env="LLMDR_TEST_HOOK"), _notice(), env={})
    assert out == [Delivery("webhook", False, out[0].detail)]
    assert "LLMDR_TEST_HOOK" in out[0].detail and "not set" in out[0].detail
    assert receiver.requests == []


def test_a_non_url_in_the_env_var_is_not_echoed():
    out = notify(Notifications(webhook_url_env="LLMDR_TEST_HOOK"), _notice(), env={"LLMDR_TEST_HOOK": "s3cr3t-t0ken"})
    assert not out[0].ok and "not an http(s) URL" in out[0].detail and "s3cr3t" not in out[0].detail


def test_no_settings_sends_nothing(receiver):
    assert notify(None, _notice()) == []
    assert notify(Notifications(), _notice()) == []
    assert receiver.requests == []


# -- notices -----------------------------------------------------------------------------------------------------


def test_notices_say_what_happened_the_evidence_and_what_next():
    bad = failover_notice("support-bot", "primary", "secondary", rto_s=None, reason="manual", ok=False,
                          details=["golden set through the router: 3/5 correct", "switch rolled back"])
    assert bad.kind == "failover" and bad.severity == "critical" and "FAILED" in bad.title
    assert "- golden set through the router: 3/5 correct" in bad.body and "Next:" in bad.body

    back = failback_notice("support-bot", "secondary", "primary", rto_s=1.25, ok=True)
    assert (back.kind, back.severity) == ("failback", "info")
    assert back.title == "llmdr: support-bot failed back secondary -> primary (switch 1.2 s)"

    ver = verification_failed_notice("support-bot", "secondary", what="2 corrupt chunks",
                                     details={"snapshot": "9f3a2c1d"})
    assert (ver.kind, ver.severity) == ("verification_failed", "critical")
    assert "secondary" in ver.title and "- snapshot: 9f3a2c1d" in ver.body
    assert "llmdr verify --region secondary --repair" in ver.body

    for n in (bad, back, ver):
        doc = n.to_json()
        assert json.loads(json.dumps(doc)) == doc and doc["bundle"] == "support-bot"
        assert "\n" not in n.title


# -- Prefect notification block (needs a Prefect API: a temporary server, ~30 s to start once per session) --------


@pytest.fixture(scope="session")
def prefect_api(request):
    """The session's temporary Prefect server: the shared ``prefect_harness`` fixture when conftest provides one,
    else a harness of our own (the only slow part of this file)."""
    try:
        request.getfixturevalue("prefect_harness")
        yield
        return
    except pytest.FixtureLookupError:
        pass
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _save_webhook_block(url: str) -> str:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    name = f"llmdr-ops-{uuid.uuid4().hex[:8]}"
    CustomWebhookNotificationBlock(
        name="llmdr", url=url, json_data={"subject": "{{subject}}", "body": "{{body}}"}, timeout=5,
    ).save(name)
    return f"custom-webhook/{name}"


def test_prefect_block_delivers_through_a_saved_block(prefect_api, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    ref = _save_webhook_block(f"{receiver.base}/prefect/{TOKEN}")
    notice = _notice()
    out = notify(Notifications(prefect_block=ref), notice)
    assert out == [Delivery(f"prefect:{ref}", True, "sent through CustomWebhookNotificationBlock")]
    assert len(receiver.requests) == 1
    assert receiver.json() == {"subject": notice.title, "body": notice.body}

    # called from inside an event loop (an async flow), Prefect's dispatch must still run the sync path
    async def from_async():
        return notify(Notifications(prefect_block=ref), notice)

    assert asyncio.run(from_async())[0].ok
    assert len(receiver.requests) == 2

    # a failing receiver is a failed Delivery, and the block's URL (with its token) is cut down to the host
    receiver.statuses = [500]
    failed = notify(Notifications(prefect_block=ref), notice)
    assert not failed[0].ok and "500" in failed[0].detail and "\n" not in failed[0].detail
    assert "HTTP Request: POST http://127.0.0.1" in caplog.text  # httpx logged the requests, with the URL cut short
    assert "s3cr3t" not in failed[0].detail and "s3cr3t" not in caplog.text


def test_prefect_block_that_does_not_exist_is_reported(prefect_api):
    out = notify(Notifications(prefect_block="custom-webhook/no-such-block"), _notice())
    assert not out[0].ok and "no-such-block" in out[0].detail and "Prefect UI" in out[0].detail


def test_prefect_block_ref_must_name_type_and_block():
    out = notify(Notifications(prefect_block="ops"), _notice())
    assert not out[0].ok and "<block-type-slug>/<name>" in out[0].detail
