// A Herald channel connector: POSTs each message as JSON to the configured `url`, and turns
// signed delivery callbacks into Herald events.
//
// The host (Herald) provides only what `wit/channel.wit` imports, as the
// `herald:channel/*@0.2.0` modules below: `http` to the hosts the manifest or the operator
// allow, `smtp`, `crypto` with secrets the plugin never sees, `config` and `log`. There is
// no `wasi:http` (so no `fetch`: build.mjs disables it), no file system, no environment and
// no sockets: WASI gives only the basics (clocks, random, stdout/stderr).
//
// Secrets never enter the plugin: name them (`{{secret:NAME}}` in a URL, header or body,
// `{ tag: 'bearer', val: 'NAME' }` as auth, `hmacSha256('NAME', ...)`) and the host does
// the rest.
//
// What the plugin prints goes to the daemon's log. An uncaught exception aborts the call:
// its message and stack become the step's error.
//
// WIT to JavaScript (componentize-js): names are camelCase (`to-name` -> `toName`); a
// `result` is a return value for `ok` and a thrown value for `err` (throw the payload
// itself, e.g. a string or a variant object); an imported function that returns `err`
// throws an Error whose `payload` holds it; a variant is `{ tag: 'kebab-name', val }`; an
// enum is its kebab-case name as a string; `option` none is `undefined`; `list<u8>` is a
// Uint8Array; a 64-bit integer is a BigInt (a number is accepted when returning one).

import { send as httpSend } from 'herald:channel/http@0.2.0';
import { hmacSha256 } from 'herald:channel/crypto@0.2.0';
import { get as configGet } from 'herald:channel/config@0.2.0';
import { log } from 'herald:channel/log@0.2.0';

const PLUGIN_ID = 'example-connector';
const VERSION = '0.1.0'; // must equal `version` in plugin.toml

// JSON Schema of the channel's `config` in herald.toml; the host checks it before
// `validateConfig` runs and names each mistake by where it is.
const CONFIG_SCHEMA =
  '{"type":"object","required":["url"],' +
  '"properties":{"url":{"type":"string","description":"Where messages are POSTed"}},' +
  '"additionalProperties":false}';

// Only these contact fields reach the plugin in `outbound.fields` (plugin.toml says the same).
const CONTACT_FIELDS = ['email', 'first_name'];

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// A `send-error` variant value.
const sendError = (tag, val) => ({ tag, val });

// Maps an `http-error` (what the host throws when there is no response) to a `send-error`.
function fromHttpError(e) {
  const error = e && e.payload;
  if (!error || typeof error.tag !== 'string') throw e; // not from the host: a bug, let it surface
  switch (error.tag) {
    case 'connect': // nothing was sent: the engine retries with backoff
      return sendError('transient', error.val);
    case 'incomplete': // it may have been sent: the outcome is unknown
      return sendError('ambiguous', error.val);
    default:
      // 'denied' (the host refused: fix the grant in herald.toml) or 'invalid-request'
      // (a bad URL or header): retrying cannot help.
      return sendError('invalid-input', error.val);
  }
}

// Maps an unsuccessful HTTP status to a `send-error`.
function fromStatus(status, body) {
  const reason = `HTTP ${status}: ${decoder.decode(body.subarray(0, 200))}`;
  if (status === 429) return sendError('rate-limited', { retryAfterMs: 1000, message: reason });
  if (status === 401 || status === 403) return sendError('unauthorized', reason);
  if (status >= 500) return sendError('transient', reason);
  // Other 4xx, and 1xx/3xx (the host does not follow redirects): retrying cannot help.
  return sendError('invalid-input', reason);
}

function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

// Compares two strings in time that depends only on their length, so a signature cannot
// be guessed byte by byte.
function constantTimeEqual(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

// The `connector` export: componentize-js looks for an export of this name.
export const connector = {
  describe() {
    // Pure and fast: the host calls it on every load.
    return {
      id: PLUGIN_ID,
      version: VERSION,
      displayName: 'Example connector',
      deliversMessages: true,
      operations: [],
      // True only if a retry with the same idempotency key can never deliver twice.
      supportsIdempotency: false,
      configSchema: CONFIG_SCHEMA,
      contactFields: CONTACT_FIELDS,
    };
  },

  validateConfig(configJson) {
    // The operator's configuration as JSON (never secrets); throw a reason to refuse it.
    const settings = JSON.parse(configJson);
    const url = settings && settings.url;
    if (typeof url !== 'string' || !/^https?:\/\//.test(url)) {
      throw '`url` must be an http(s) URL';
    }
  },

  send(msg) {
    if (!msg.to) throw sendError('invalid-input', 'recipient `to` is empty');
    console.log(`sending ${msg.idempotencyKey} to ${msg.to}`);

    // `config.get` returns the value JSON-encoded (or undefined when the key is absent).
    const rawUrl = configGet('url');
    if (rawUrl === undefined) throw sendError('invalid-input', 'config `url` is not set');
    const url = JSON.parse(rawUrl);

    const body = {
      id: msg.idempotencyKey,
      to: msg.to,
      to_name: msg.toName ?? null,
      subject: msg.subject ?? null,
      text: msg.text ?? null,
      // Only the contact fields plugin.toml declares, as a JSON object.
      fields: JSON.parse(msg.fields),
    };

    // The host performs the request (allowed hosts, secret substitution, scrubbing).
    let response;
    try {
      response = httpSend({
        method: 'POST',
        url,
        headers: [
          ['content-type', 'application/json'],
          // The same key on every retry of this message: the receiver can deduplicate.
          ['idempotency-key', msg.idempotencyKey],
        ],
        body: encoder.encode(JSON.stringify(body)),
        auth: { tag: 'none' },
        timeoutMs: undefined, // the host caps it by the call's deadline anyway
      });
    } catch (e) {
      throw fromHttpError(e);
    }

    const { status } = response;
    if (status < 200 || status >= 300) throw fromStatus(status, response.body);

    // Deliberately not wrapped in try/catch: a body that is not JSON throws here, and the
    // exception's message and stack show up as the step's error.
    const reply = JSON.parse(decoder.decode(response.body));
    const id = reply && typeof reply.id === 'string' ? reply.id : undefined;
    log('info', 'message accepted', [['id', id ?? '']]);
    return { providerMessageId: id, details: '{}' };
  },

  parseWebhook(req) {
    // Throwing a reason answers the callback with HTTP 400.
    if (req.method !== 'POST') throw 'callbacks are POSTed';

    // The host computes the HMAC with the secret; the plugin only sees the digest.
    // Fail closed: without the secret nothing can be verified, so nothing is accepted.
    let expected;
    try {
      expected = toHex(hmacSha256('WEBHOOK_SECRET', req.body));
    } catch (e) {
      throw `WEBHOOK_SECRET is not available (${e.payload ?? e}); callbacks are refused`;
    }
    const header = req.headers.find(([name]) => name === 'x-signature');
    if (!header) throw 'missing X-Signature';
    if (!constantTimeEqual(expected, header[1])) throw 'invalid X-Signature';

    let event;
    try {
      event = JSON.parse(decoder.decode(req.body));
    } catch (e) {
      throw `body is not JSON: ${e.message}`;
    }
    if (!event || typeof event !== 'object') throw 'body is not a JSON object';

    let kind;
    if (event.type === 'delivered') {
      kind = { tag: 'delivered' };
    } else if (event.type === 'bounced') {
      kind = {
        tag: 'bounced',
        val: { kind: event.permanent === true ? 'hard' : 'soft', reason: undefined },
      };
    } else {
      return []; // other callbacks carry nothing Herald records
    }
    return [
      {
        kind,
        messageId: typeof event.id === 'string' ? event.id : undefined,
        recipient: typeof event.to === 'string' ? event.to : undefined,
        properties: '{}',
        timestampMs: undefined,
        machine: false,
      },
    ];
  },
};
