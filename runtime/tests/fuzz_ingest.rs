//! Fuzz target for the ingest parser, the first code a public write key reaches:
//! `ingest::parse_body` (a Segment batch, or a single message for an endpoint's kind) and the
//! client-key rules applied to what it accepts, `ingest::restrict_client`.
//!
//! Under `cargo test` it replays the committed corpus (`tests/__fuzz__/ingest/corpus/`: real
//! SDK payloads and edge cases), then a fixed number of random inputs from a fixed seed (the
//! same every run). Each input is parsed as it is, as a Segment-shaped body built from its
//! bytes (ids beyond 64 bits, odd timestamps, deep nesting, invalid UTF-8, a batch `context`
//! copied into items, ...), and as a corpus payload with a few edits.
//!
//! What must hold for any body: no panic; an error is `Invalid` with a code and a message; on
//! success every message is one of the body's items (its kind, its fields, the batch context
//! where it had none), every batch item is either accepted or rejected, once, and a rejection
//! names its item. The client rules drop exactly the items a client key may not send.
//!
//! Longer runs: `BOLERO_RANDOM_ITERATIONS=200000 cargo test -p herald-runtime --test
//! fuzz_ingest`; a failure prints the `BOLERO_RANDOM_SEED` that replays it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use herald_runtime::ingest::{
    parse_body, restrict_client, IngestError, Parsed, CHANNEL_EVENT_KINDS, MAX_BATCH_BYTES,
    MAX_EXPANDED_BATCH_BYTES, MAX_MESSAGE_BYTES, TYPES,
};
use herald_runtime::store::{IdKind, SledStore, Store};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Random inputs after the corpus: quick in a debug build on a busy two-core machine.
const RANDOM_INPUTS: usize = 3000;

/// Channels of the project the client rules are checked against.
const CHANNELS: [&str; 3] = ["email", "sms", "push_ios"];

/// Users the store knows, and their contacts (`known-3` is another id of `known-1`'s contact).
const KNOWN_USERS: [(&str, &str); 3] = [("known-1", "c1"), ("known-2", "c2"), ("known-3", "c1")];

fn corpus() -> &'static [Vec<u8>] {
    static CORPUS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/__fuzz__/ingest/corpus");
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .expect("the ingest corpus is committed")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|p| std::fs::read(p).expect("a corpus file is readable"))
            .collect()
    })
}

fn shown(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(600) {
        Some((i, _)) => format!("{}… ({} bytes)", &text[..i], body.len()),
        None => text.into_owned(),
    }
}

/// A body as the client sent it, split without `parse_body`: its items, its `context` and its
/// `writeKey`.
struct Envelope {
    items: Vec<Box<RawValue>>,
    context: Option<Box<RawValue>>,
    write_key: Option<String>,
}

fn envelope(body: &[u8]) -> Option<Envelope> {
    #[derive(serde::Deserialize)]
    struct Shape {
        batch: Option<Vec<Box<RawValue>>>,
        context: Option<Box<RawValue>>,
        #[serde(rename = "writeKey")]
        write_key: Option<String>,
    }
    let shape: Shape = serde_json::from_slice(body).ok()?;
    Some(Envelope {
        items: shape.batch?,
        context: shape.context,
        write_key: shape.write_key,
    })
}

/// No id given as a number lost digits on the way in.
fn assert_ids_exact(fields: &Map<String, Value>, body: &[u8]) {
    for key in ["userId", "anonymousId", "previousId", "groupId"] {
        if let Some(Value::Number(n)) = fields.get(key) {
            assert!(
                n.is_i64() || n.is_u64(),
                "\"{key}\": {n} was accepted though it is not a 64-bit integer: {}",
                shown(body)
            );
        }
    }
}

/// Every property of `parse_body` for one body and kind; the accepted messages when it
/// accepted some.
fn assert_parse_holds(kind: Option<&str>, body: &[u8]) -> Option<Parsed> {
    let parsed = match parse_body(kind, body) {
        Ok(parsed) => parsed,
        Err(IngestError::Invalid { code, message }) => {
            assert!(
                !code.is_empty() && !message.is_empty(),
                "an error without code or message for {kind:?}: {}",
                shown(body)
            );
            if body.len() > MAX_BATCH_BYTES {
                assert_eq!(code, "payload_too_large");
            }
            return None;
        }
        Err(other) => panic!("parsing alone failed outside validation: {other}"),
    };
    assert!(body.len() <= MAX_BATCH_BYTES);
    assert!(
        !parsed.messages.is_empty(),
        "accepted nothing: {}",
        shown(body)
    );
    for r in &parsed.rejected {
        assert!(
            !r.code.is_empty() && !r.message.is_empty(),
            "a rejection without code or message: {r:?}"
        );
    }
    match kind {
        Some(kind) => {
            let Ok(Value::Object(whole)) = serde_json::from_slice::<Value>(body) else {
                panic!(
                    "accepted a single message that is not an object: {}",
                    shown(body)
                );
            };
            assert!(body.len() <= MAX_MESSAGE_BYTES);
            assert!(parsed.rejected.is_empty());
            let [m] = parsed.messages.as_slice() else {
                panic!("one body, {} messages", parsed.messages.len());
            };
            assert_eq!((m.index(), m.kind()), (0, kind));
            assert_eq!(m.fields(), &whole, "the message is not the body");
            assert_ids_exact(m.fields(), body);
            let key = whole.get("writeKey").and_then(Value::as_str);
            assert_eq!(parsed.write_key.as_deref(), key);
        }
        None => {
            let Some(env) = envelope(body) else {
                panic!("accepted a body that is no batch: {}", shown(body));
            };
            let total = env.items.len();
            assert_eq!(
                parsed.messages.len() + parsed.rejected.len(),
                total,
                "items accepted and rejected do not add up to the batch: {}",
                shown(body)
            );
            let mut seen = vec![false; total];
            let indices = parsed
                .messages
                .iter()
                .map(|m| m.index())
                .chain(parsed.rejected.iter().map(|r| r.index));
            for i in indices {
                assert!(
                    i < total && !seen[i],
                    "item {i} reported twice or not in the batch"
                );
                seen[i] = true;
            }
            assert!(parsed
                .messages
                .windows(2)
                .all(|w| w[0].index() < w[1].index()));
            assert!(parsed.rejected.windows(2).all(|w| w[0].index < w[1].index));
            for r in &parsed.rejected {
                let prefix = format!("batch[{}]: ", r.index);
                assert!(
                    r.message.starts_with(&prefix),
                    "a rejection that does not name its item: {r:?}"
                );
            }
            let context: Option<Value> = env.context.as_ref().map(|c| {
                serde_json::from_str(c.get()).expect("an accepted batch's context parses")
            });
            for m in &parsed.messages {
                let raw = env.items[m.index()].get();
                let Ok(Value::Object(mut item)) = serde_json::from_str::<Value>(raw) else {
                    panic!("accepted item {} is not an object: {raw}", m.index());
                };
                assert_eq!(Some(m.kind()), item.get("type").and_then(Value::as_str));
                assert!(TYPES.contains(&m.kind()));
                let mut size = raw.len();
                if let (Some(ctx), false) = (&context, item.contains_key("context")) {
                    item.insert("context".into(), ctx.clone());
                    size += env.context.as_ref().map_or(0, |c| c.get().len()) + 12;
                }
                assert!(
                    size <= MAX_MESSAGE_BYTES,
                    "item {} is {size} bytes with its context, and was accepted",
                    m.index()
                );
                assert_eq!(
                    m.fields(),
                    &item,
                    "item {} changed on the way in",
                    m.index()
                );
                assert_ids_exact(m.fields(), body);
            }
            assert_eq!(parsed.write_key, env.write_key);
        }
    }
    Some(parsed)
}

/// A store that knows [`KNOWN_USERS`], in a directory removed with it.
struct KnownUsers {
    store: SledStore,
    _dir: tempfile::TempDir,
}

impl KnownUsers {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = SledStore::open(dir.path(), 4 << 20).expect("a store");
        for (user, contact) in KNOWN_USERS {
            store
                .link_identity(IdKind::User, user, contact)
                .expect("an identity is written");
        }
        KnownUsers { store, _dir: dir }
    }
}

fn id_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// What a client key may not send, decided from the message alone: an event a channel
/// reports or Herald owns, or an alias merging a known user into another contact.
fn refused_for_clients(kind: &str, fields: &Map<String, Value>) -> Option<&'static str> {
    let known: BTreeMap<&str, &str> = KNOWN_USERS.into_iter().collect();
    match kind {
        "track" => {
            let event = fields.get("event")?.as_str()?;
            let reported = CHANNELS.iter().any(|c| {
                CHANNEL_EVENT_KINDS
                    .iter()
                    .any(|k| event == format!("{c}_{k}"))
            });
            (event.starts_with("herald_") || reported).then_some("reserved_event")
        }
        "alias" => {
            let contact =
                |key| id_text(fields.get(key)).and_then(|id| known.get(id.as_str()).copied());
            let previous = contact("previousId")?;
            (contact("userId") != Some(previous)).then_some("merge_refused")
        }
        _ => None,
    }
}

fn assert_client_rules_hold(parsed: &Parsed, batch: bool, users: &KnownUsers) {
    let mut restricted = Parsed {
        messages: parsed.messages.clone(),
        rejected: parsed.rejected.clone(),
        write_key: parsed.write_key.clone(),
    };
    let channels: Vec<String> = CHANNELS.iter().map(|c| c.to_string()).collect();
    restrict_client(&mut restricted, &channels, &users.store, batch).expect("the store answers");
    assert_eq!(
        restricted.messages.len() + restricted.rejected.len(),
        parsed.messages.len() + parsed.rejected.len(),
        "the client rules lost or invented an item"
    );
    assert!(restricted
        .rejected
        .windows(2)
        .all(|w| w[0].index <= w[1].index));
    for r in &parsed.rejected {
        assert!(
            restricted.rejected.contains(r),
            "an earlier rejection vanished: {r:?}"
        );
    }
    let mut kept = restricted.messages.iter().peekable();
    for m in &parsed.messages {
        let expected = refused_for_clients(m.kind(), m.fields());
        let was_kept = kept.peek().is_some_and(|k| k.index() == m.index());
        if was_kept {
            kept.next();
        }
        match expected {
            None => assert!(
                was_kept,
                "item {} dropped for a client: {:?}",
                m.index(),
                m.fields()
            ),
            Some(code) => {
                assert!(
                    !was_kept,
                    "item {} kept for a client: {:?}",
                    m.index(),
                    m.fields()
                );
                let r = restricted
                    .rejected
                    .iter()
                    .find(|r| r.index == m.index() && r.code == code)
                    .unwrap_or_else(|| panic!("item {} refused without a {code}", m.index()));
                assert!(!r.message.is_empty());
                if batch {
                    assert!(r.message.starts_with(&format!("batch[{}]: ", m.index())));
                }
            }
        }
    }
    assert!(
        kept.next().is_none(),
        "the client rules kept a message twice or out of order"
    );
}

/// Parse `body` as a batch and as a single message of each of `kinds`, and check the client
/// rules on whatever was accepted.
fn assert_ingest_holds(kinds: &[&str], body: &[u8], users: &KnownUsers) {
    if let Some(parsed) = assert_parse_holds(None, body) {
        assert_client_rules_hold(&parsed, true, users);
    }
    for kind in kinds {
        if let Some(parsed) = assert_parse_holds(Some(kind), body) {
            assert_client_rules_hold(&parsed, false, users);
        }
    }
}

/// Reads choices off the fuzzer's bytes and, once they run out, off a pseudo-random stream
/// seeded by them: a short input still makes a whole case, the same one every time.
struct Draw<'a> {
    bytes: &'a [u8],
    state: u64,
}

impl<'a> Draw<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        // FNV-1a of the input seeds the stream.
        let state = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        Draw { bytes, state }
    }

    fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((b, rest)) => {
                self.bytes = rest;
                *b
            }
            None => {
                // SplitMix64.
                self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = self.state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                (z ^ (z >> 31)) as u8
            }
        }
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (usize::from(self.byte()) << 8 | usize::from(self.byte())) % n
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn pick<'s>(&mut self, from: &[&'s str]) -> &'s str {
        from[self.below(from.len())]
    }
}

/// JSON tokens as written on the wire, including those a JSON library would never write.
const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "42",
    "1.5",
    "-7e-3",
    "9007199254740993",
    "9223372036854775807",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "1E+2",
];

/// Text that breaks JSON as a value but not always as part of a body: numbers beyond a
/// double, a lone surrogate escape, an unterminated string, bytes that are not UTF-8.
const BROKEN: &[&[u8]] = &[
    b"1e400",
    b"-1e400",
    b"\"\\ud800\"",
    b"\"unterminated",
    b"\"caf\xc3\"",
    b"\"\xff\xfe\"",
    b"\"\xed\xa0\x80\"",
];

const STRINGS: &[&str] = &[
    "\"\"",
    "\" \"",
    "\"known-1\"",
    "\"known-2\"",
    "\"known-3\"",
    "\"u-1\"",
    "\"anon-9\"",
    "\"é\\u00e9\"",
    "\"\\ud83d\\ude00\"",
    "\"\\u0000\"",
    "\"line\\nbreak\"",
    "\"\u{1F600}\"",
];

const EVENTS: &[&str] = &[
    "\"Order Completed\"",
    "\"signed_up\"",
    "\"email_opened\"",
    "\"sms_delivered\"",
    "\"push_ios_clicked\"",
    "\"email_x_opened\"",
    "\"email_\"",
    "\"herald_merge\"",
    "\"herald\"",
    "\"  \"",
    "\"\"",
];

const TIMESTAMPS: &[&str] = &[
    "\"2024-05-01T12:00:00Z\"",
    "\"2024-05-01T12:00:00.123+02:00\"",
    "\"2024-13-45T99:99:99Z\"",
    "\"yesterday\"",
    "\"\"",
    "1714564800000",
    "null",
];

/// Writes Segment-shaped JSON text chosen by a [`Draw`].
struct Writer<'a, 'b> {
    draw: &'b mut Draw<'a>,
    out: Vec<u8>,
}

impl Writer<'_, '_> {
    fn put(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
    }

    fn key(&mut self, first: &mut bool, key: &str) {
        if !std::mem::take(first) {
            self.put(",");
        }
        self.put("\"");
        self.put(key);
        self.put("\":");
    }

    /// Now and then, something that is not JSON at all.
    fn broken(&mut self) -> bool {
        if !self.draw.chance(120) {
            return false;
        }
        let b = BROKEN[self.draw.below(BROKEN.len())];
        self.out.extend_from_slice(b);
        true
    }

    fn string(&mut self) {
        if !self.broken() {
            let s = self.draw.pick(STRINGS);
            self.put(s);
        }
    }

    fn number(&mut self) {
        if !self.broken() {
            let n = self.draw.pick(NUMBERS);
            self.put(n);
        }
    }

    fn id(&mut self) {
        match self.draw.below(3) {
            0 => self.number(),
            _ => self.string(),
        }
    }

    /// Any JSON value, nested at most `depth` deep.
    fn value(&mut self, depth: usize) {
        match self.draw.below(if depth == 0 { 4 } else { 7 }) {
            0 => self.number(),
            1 => self.string(),
            2 => {
                let t = self.draw.pick(&["null", "true", "false"]);
                self.put(t);
            }
            3 => self.put("{}"),
            4 => {
                self.put("[");
                for i in 0..self.draw.below(4) {
                    if i > 0 {
                        self.put(",");
                    }
                    self.value(depth - 1);
                }
                self.put("]");
            }
            _ => self.object(depth - 1),
        }
    }

    fn object(&mut self, depth: usize) {
        self.put("{");
        let mut first = true;
        for _ in 0..self.draw.below(4) {
            let key = self
                .draw
                .pick(&["plan", "name", "nested", "é", "", "context", "a"]);
            self.key(&mut first, key);
            self.value(depth);
        }
        self.put("}");
    }

    /// Nesting far deeper than any parser's limit.
    fn deep(&mut self) {
        let levels = 100 + self.draw.below(200);
        for _ in 0..levels {
            self.put("[");
        }
        for _ in 0..levels {
            self.put("]");
        }
    }

    fn fields(&mut self) {
        if self.draw.chance(40) {
            self.deep();
        } else if self.draw.chance(8) {
            self.value(2);
        } else {
            self.object(3);
        }
    }

    /// One Segment message (mostly well formed, every field optional).
    fn message(&mut self, typed: bool) {
        if self.draw.chance(12) {
            return self.value(2);
        }
        self.put("{");
        let mut first = true;
        if typed && !self.draw.chance(10) {
            self.key(&mut first, "type");
            let t = self.draw.pick(&[
                "\"track\"",
                "\"track\"",
                "\"identify\"",
                "\"page\"",
                "\"screen\"",
                "\"group\"",
                "\"alias\"",
                "\"TRACK\"",
                "\"\"",
                "7",
            ]);
            self.put(t);
        }
        for key in ["userId", "anonymousId", "previousId", "groupId"] {
            if !self.draw.chance(3) {
                self.key(&mut first, key);
                self.id();
            }
        }
        if !self.draw.chance(4) {
            self.key(&mut first, "event");
            let e = self.draw.pick(EVENTS);
            self.put(e);
        }
        for key in ["properties", "traits", "context", "integrations"] {
            if self.draw.chance(2) {
                self.key(&mut first, key);
                self.fields();
            }
        }
        if self.draw.chance(2) {
            self.key(&mut first, "timestamp");
            let t = self.draw.pick(TIMESTAMPS);
            self.put(t);
        }
        if self.draw.chance(2) {
            self.key(&mut first, "messageId");
            self.id();
        }
        if self.draw.chance(16) {
            // Past the 32 KB a message may have.
            self.key(&mut first, "properties");
            self.put("{\"blob\":\"");
            let len = MAX_MESSAGE_BYTES - 200 + self.draw.below(400);
            self.out.extend(std::iter::repeat_n(b'x', len));
            self.put("\"}");
        }
        self.put("}");
    }

    /// A batch body, or (for a kind) a single message.
    fn body(mut self, single: bool) -> Vec<u8> {
        if single {
            self.message(false);
            return self.out;
        }
        self.put("{");
        let mut first = true;
        if self.draw.chance(4) {
            self.key(&mut first, "writeKey");
            let k = self.draw.pick(&["\"wk\"", "\"\"", "5", "null"]);
            self.put(k);
        }
        let huge_context = self.draw.chance(24);
        if self.draw.chance(3) || huge_context {
            self.key(&mut first, "context");
            if huge_context {
                // Copied into every item: a small request that would grow past 4 MB.
                self.put("{\"pad\":\"");
                let len = MAX_MESSAGE_BYTES - 80 - self.draw.below(40);
                self.out.extend(std::iter::repeat_n(b'c', len));
                self.put("\"}");
            } else {
                self.fields();
            }
        }
        match self.draw.below(12) {
            0 => {}
            1 => {
                self.key(&mut first, "batch");
                self.value(1);
            }
            _ => {
                self.key(&mut first, "batch");
                self.put("[");
                // With the huge context, small plain items, about as many as fit in 4 MB.
                let items = if huge_context {
                    MAX_EXPANDED_BATCH_BYTES / MAX_MESSAGE_BYTES - 4 + self.draw.below(8)
                } else {
                    self.draw.below(10)
                };
                for i in 0..items {
                    if i > 0 {
                        self.put(",");
                    }
                    if huge_context && !self.draw.chance(16) {
                        self.put(r#"{"type":"track","userId":"u-1","event":"e"}"#);
                    } else {
                        self.message(true);
                    }
                }
                self.put("]");
            }
        }
        if self.draw.chance(20) {
            // A key given twice.
            self.key(&mut first, "batch");
            self.put("[]");
        }
        self.put("}");
        self.out
    }
}

/// Edits that break JSON in the ways clients do, or just differently.
const SPLICES: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "null",
    "\"batch\":[]",
    "\"context\":{}",
    "\"type\":\"alias\"",
    "\"userId\":18446744073709551616",
    "1e400",
    "\u{feff}",
    "\u{0}",
];

/// The ranges of the body's string values (not its keys), quotes included.
fn string_values(body: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut values = Vec::new();
    let mut at = 0;
    while let Some(offset) = body[at..].iter().position(|b| *b == b'"') {
        let start = at + offset;
        let mut escaped = false;
        let Some(len) = body[start + 1..].iter().position(|b| {
            let close = *b == b'"' && !escaped;
            escaped = *b == b'\\' && !escaped;
            close
        }) else {
            break;
        };
        let end = start + len + 2;
        if body[end..].iter().find(|b| !b.is_ascii_whitespace()) != Some(&b':') {
            values.push(start..end);
        }
        at = end;
    }
    values
}

/// A corpus body with a few edits, chosen by `draw`: most swap string values for other tokens
/// (the body stays JSON, its items change), some also break it.
fn mutate(draw: &mut Draw) -> Vec<u8> {
    let corpus = corpus();
    let mut body = corpus[draw.below(corpus.len())].clone();
    for _ in 0..1 + draw.below(4) {
        let values = string_values(&body);
        if values.is_empty() {
            break;
        }
        let pools = [STRINGS, EVENTS, NUMBERS, TIMESTAMPS];
        let pool = pools[draw.below(pools.len())];
        let token = draw.pick(pool).as_bytes();
        body.splice(
            values[draw.below(values.len())].clone(),
            token.iter().copied(),
        );
    }
    if draw.chance(3) {
        let at = draw.below(body.len() + 1);
        match draw.below(5) {
            0 => {
                let end = (at + draw.below(24)).min(body.len());
                body.drain(at..end);
            }
            1 => {
                let end = (at + draw.below(80)).min(body.len());
                let copy = body[at..end].to_vec();
                body.splice(at..at, copy);
            }
            2 => {
                let b = draw.byte();
                body.insert(at, b);
            }
            3 => body.truncate(at),
            _ => {
                let s = SPLICES[draw.below(SPLICES.len())].as_bytes();
                body.splice(at..at, s.iter().copied());
            }
        }
    }
    body
}

/// The bounded random phase of plain `cargo test`: inputs from a fixed seed, so every run (and
/// CI) checks the same ones. bolero's own random phase, with fresh seeds, runs when
/// `BOLERO_RANDOM_ITERATIONS` asks for it.
fn seeded_inputs(n: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut state: u64 = 0x5eed_0f4e_7a1d;
    let mut next = move || {
        // xorshift64*: plenty for picking bytes.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    (0..n).map(move |_| {
        let len = (next() % 512) as usize;
        (0..len).map(|_| next() as u8).collect()
    })
}

/// bolero's random inputs: none unless `BOLERO_RANDOM_ITERATIONS` is set (it then says how many).
fn bolero_iterations() -> usize {
    if std::env::var_os("BOLERO_RANDOM_ITERATIONS").is_some() {
        RANDOM_INPUTS
    } else {
        0
    }
}

#[test]
fn parsing_any_body_accounts_for_every_item_and_client_rules_drop_only_reserved_ones() {
    // A panic inside a check fails the test; nothing observes the store after one.
    let users = std::panic::AssertUnwindSafe(KnownUsers::new());
    let users = &users;
    let property = |input: &[u8]| {
        // As sent: a batch, and a single message of every kind.
        assert_ingest_holds(&TYPES, input, users);

        let mut draw = Draw::new(input);
        let single = draw.chance(3);
        let kind = draw.pick(&TYPES);
        let built = Writer {
            draw: &mut draw,
            out: Vec::new(),
        }
        .body(single);
        let kinds: &[&str] = if single { &[kind] } else { &[] };
        assert_ingest_holds(kinds, &built, users);

        let mutated = mutate(&mut draw);
        assert_ingest_holds(&[kind], &mutated, users);
    };
    bolero::check!(name = "ingest")
        .with_iterations(bolero_iterations())
        .for_each(property);
    for input in seeded_inputs(RANDOM_INPUTS) {
        property(&input);
    }
}

/// Bodies at the edges of the size limits, where an off-by-one would hide.
#[test]
fn bodies_at_the_size_limits_are_parsed_by_the_same_rules() {
    let users = KnownUsers::new();
    let message = |len: usize| {
        let head = r#"{"type":"track","userId":"u-1","event":"e","properties":{"p":""#;
        let tail = "\"}}";
        let pad = len - head.len() - tail.len();
        format!("{head}{}{tail}", "x".repeat(pad))
    };
    for len in [MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES + 1] {
        let single = message(len);
        assert_eq!(single.len(), len);
        assert_eq!(
            parse_body(Some("track"), single.as_bytes()).is_ok(),
            len <= MAX_MESSAGE_BYTES
        );
        assert_ingest_holds(&["track"], single.as_bytes(), &users);
        let batch = format!(r#"{{"batch":[{single},{}]}}"#, message(100));
        assert_ingest_holds(&[], batch.as_bytes(), &users);
    }
    // A context that fits an item exactly once copied in, and one byte more.
    let context = format!(r#"{{"c":"{}"}}"#, "y".repeat(1000));
    for extra in [0, 1] {
        let item = message(MAX_MESSAGE_BYTES - context.len() - 12 + extra);
        let batch = format!(
            r#"{{"context":{context},"batch":[{item},{}]}}"#,
            message(80)
        );
        let parsed = assert_parse_holds(None, batch.as_bytes()).expect("one item fits");
        assert_eq!(parsed.rejected.len(), extra, "{:?}", parsed.rejected);
    }
    // Requests around 500 KB on the wire, and around 4 MB once the context is copied in.
    for len in [MAX_BATCH_BYTES, MAX_BATCH_BYTES + 1] {
        let items = vec![message(100); 4].join(",");
        let head = format!(r#"{{"batch":[{items}],"pad":""#);
        let body = format!("{head}{}\"}}", "z".repeat(len - head.len() - 2));
        assert_eq!(body.len(), len);
        assert_ingest_holds(&[], body.as_bytes(), &users);
    }
    let context = format!(r#"{{"c":"{}"}}"#, "y".repeat(MAX_MESSAGE_BYTES - 200));
    let item = r#"{"type":"track","userId":"u","event":"e"}"#;
    let grown = item.len() + context.len() + 12;
    let fitting = MAX_EXPANDED_BATCH_BYTES / grown;
    for items in [fitting, fitting + 1] {
        let body = format!(
            r#"{{"context":{context},"batch":[{}]}}"#,
            vec![item; items].join(",")
        );
        let refused = matches!(
            parse_body(None, body.as_bytes()),
            Err(IngestError::Invalid {
                code: "payload_too_large",
                ..
            })
        );
        assert_eq!(refused, items > fitting, "{items} items of {grown} bytes");
        assert_ingest_holds(&[], body.as_bytes(), &users);
    }
}
