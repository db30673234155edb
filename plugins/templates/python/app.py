"""A Herald channel connector: POSTs each message as JSON to the configured `url`, and
turns signed delivery callbacks into Herald events.

The host (Herald) provides only what `wit/channel.wit` imports, as the `wit_world.imports`
modules that componentize-py generates: `http` to the hosts the manifest or the operator
allow, `smtp`, `crypto` with secrets the plugin never sees, `config` and `log`. There is
no `wasi:http` (so no `urllib`, `http.client` or `requests`), no file system, no
environment and no sockets: WASI gives only the basics (clocks, random, stdout/stderr).

Secrets never enter the plugin: name them (`{{secret:NAME}}` in a URL, header or body,
`Auth_Bearer("NAME")`, `crypto.hmac_sha256("NAME", ...)`) and the host does the rest.

What the plugin prints goes to the daemon's log. An uncaught exception aborts the call:
its message and traceback become the step's error.

A WIT `result` is a return value for `ok` and a raised `Err(...)` for `err`; a WIT
variant case is a class such as `SendError_Transient(...)`.
"""

import hmac
import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config, crypto, http, log
from wit_world.imports.types import (
    Bounce,
    BounceKind,
    Description,
    EventKind_Bounced,
    EventKind_Delivered,
    Outbound,
    RateLimit,
    SendError_Ambiguous,
    SendError_InvalidInput,
    SendError_RateLimited,
    SendError_Transient,
    SendError_Unauthorized,
    Sent,
    WebhookEvent,
    WebhookRequest,
)

PLUGIN_ID = "example-connector"
VERSION = "0.1.0"  # must equal `version` in plugin.toml

# JSON Schema of the channel's `config` in herald.toml; the host checks it before
# `validate_config` runs and names each mistake by where it is.
CONFIG_SCHEMA = (
    '{"type":"object","required":["url"],'
    '"properties":{"url":{"type":"string","description":"Where messages are POSTed"}},'
    '"additionalProperties":false}'
)

# Only these contact fields reach the plugin in `outbound.fields` (plugin.toml says the same).
CONTACT_FIELDS = ["email", "first_name"]


class Connector(exports.Connector):
    """The `connector` export: componentize-py looks for this class in module `app`."""

    def describe(self) -> Description:
        # Pure and fast: the host calls it on every load.
        return Description(
            id=PLUGIN_ID,
            version=VERSION,
            display_name="Example connector",
            delivers_messages=True,
            operations=[],
            # True only if a retry with the same idempotency key can never deliver twice.
            supports_idempotency=False,
            config_schema=CONFIG_SCHEMA,
            contact_fields=CONTACT_FIELDS,
        )

    def validate_config(self, config_json: str) -> None:
        # The operator's configuration as JSON (never secrets); raise Err(reason) to refuse it.
        settings = json.loads(config_json)
        url = settings.get("url") if isinstance(settings, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise Err("`url` must be an http(s) URL")

    def send(self, msg: Outbound) -> Sent:
        if not msg.to:
            raise Err(SendError_InvalidInput("recipient `to` is empty"))
        print(f"sending {msg.idempotency_key} to {msg.to}")

        # `config.get` returns the value JSON-encoded (or None when the key is absent).
        raw_url = config.get("url")
        if raw_url is None:
            raise Err(SendError_InvalidInput("config `url` is not set"))
        url = json.loads(raw_url)

        body = {
            "id": msg.idempotency_key,
            "to": msg.to,
            "to_name": msg.to_name,
            "subject": msg.subject,
            "text": msg.text,
            # Only the contact fields plugin.toml declares, as a JSON object.
            "fields": json.loads(msg.fields),
        }
        request = http.Request(
            method="POST",
            url=url,
            headers=[
                ("content-type", "application/json"),
                # The same key on every retry of this message: the receiver can deduplicate.
                ("idempotency-key", msg.idempotency_key),
            ],
            body=json.dumps(body).encode(),
            auth=http.Auth_None_(),
            timeout_ms=None,  # the host caps it by the call's deadline anyway
        )

        # The host performs the request (allowed hosts, secret substitution, scrubbing).
        # A failure without a response is an `http.HttpError` inside an `Err`.
        try:
            response = http.send(request)
        except Err as e:
            error = e.value
            if isinstance(error, http.HttpError_Connect):
                # Nothing was sent: the engine retries with backoff.
                raise Err(SendError_Transient(error.value))
            if isinstance(error, http.HttpError_Incomplete):
                # It may have been sent: the outcome is unknown.
                raise Err(SendError_Ambiguous(error.value))
            # HttpError_Denied (the host refused: fix the grant in herald.toml) or
            # HttpError_InvalidRequest (a bad URL or header): retrying cannot help.
            raise Err(SendError_InvalidInput(error.value))

        status = response.status
        if 200 <= status < 300:
            # Deliberately not wrapped in try/except: a body that is not JSON raises here,
            # and the exception's message and traceback show up as the step's error.
            reply = json.loads(response.body)
            message_id = reply.get("id") if isinstance(reply, dict) else None
            if not isinstance(message_id, str):
                message_id = None
            log.log(log.Level.INFO, "message accepted", [("id", message_id or "")])
            return Sent(provider_message_id=message_id, details="{}")

        reason = f"HTTP {status}: {response.body[:200].decode(errors='replace')}"
        if status == 429:
            raise Err(SendError_RateLimited(RateLimit(retry_after_ms=1000, message=reason)))
        if status in (401, 403):
            raise Err(SendError_Unauthorized(reason))
        if 400 <= status < 500:
            raise Err(SendError_InvalidInput(reason))
        if status >= 500:
            raise Err(SendError_Transient(reason))
        # 1xx/3xx: the host does not follow redirects; treat as a configuration problem.
        raise Err(SendError_InvalidInput(reason))

    def parse_webhook(self, req: WebhookRequest) -> list[WebhookEvent]:
        # Raising Err(reason) answers the callback with HTTP 400.
        if req.method != "POST":
            raise Err("callbacks are POSTed")

        # The host computes the HMAC with the secret; the plugin only sees the digest.
        # Fail closed: without the secret nothing can be verified, so nothing is accepted.
        try:
            expected = crypto.hmac_sha256("WEBHOOK_SECRET", req.body).hex()
        except Err as e:
            raise Err(f"WEBHOOK_SECRET is not available ({e.value}); callbacks are refused")
        presented = next((v for k, v in req.headers if k == "x-signature"), None)
        if presented is None:
            raise Err("missing X-Signature")
        # Constant-time comparison, so the signature cannot be guessed byte by byte.
        if not hmac.compare_digest(expected.encode(), presented.encode()):
            raise Err("invalid X-Signature")

        try:
            event = json.loads(req.body)
        except ValueError as e:
            raise Err(f"body is not JSON: {e}")
        if not isinstance(event, dict):
            raise Err("body is not a JSON object")

        kind = event.get("type")
        if kind == "delivered":
            event_kind = EventKind_Delivered()
        elif kind == "bounced":
            bounce_kind = BounceKind.HARD if event.get("permanent") is True else BounceKind.SOFT
            event_kind = EventKind_Bounced(Bounce(kind=bounce_kind, reason=None))
        else:
            return []  # other callbacks carry nothing Herald records

        message_id = event.get("id")
        recipient = event.get("to")
        return [
            WebhookEvent(
                kind=event_kind,
                message_id=message_id if isinstance(message_id, str) else None,
                recipient=recipient if isinstance(recipient, str) else None,
                properties="{}",
                timestamp_ms=None,
                machine=False,
            )
        ]
