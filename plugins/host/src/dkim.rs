//! DKIM signing (RFC 6376, RFC 8463) of the messages the `smtp` capability submits.
//!
//! The operator configures a signing domain, a selector and a private key per relay
//! (`[smtp.dkim]` in the grant); [`SmtpClient`](crate::smtp_client::SmtpClient) then signs
//! each message right before `DATA` and prepends the `DKIM-Signature:` header. Only messages
//! whose `From` domain is the signing domain or one of its subdomains are signed (so the
//! signature aligns with the From domain for DMARC); others go out unsigned, with a warning
//! logged once per From domain.
//!
//! Canonicalization is `relaxed/relaxed` (it survives relays that re-fold headers or trim
//! trailing white space), signatures carry `t=` and no `l=` (the whole body is covered).
//! The cryptography is ring's: RSASSA-PKCS1-v1_5 with SHA-256 (`rsa-sha256`, keys of 2048
//! bits or more) and Ed25519 over the SHA-256 hash (`ed25519-sha256`); PEM keys are read with
//! `rustls-pki-types`. Only the message format (header selection, canonicalization and the
//! signature header) is done here.

use std::collections::HashSet;
use std::fmt;
use std::sync::Mutex;

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::PrivateKeyDer;
use sha2::{Digest as _, Sha256};

/// The header fields signed when the configuration names none: the ones a receiver shows or
/// acts on. Each is signed as often as it occurs in the message (absent ones are skipped).
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Reply-To",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Cc",
];

/// At most this many From domains are remembered as already warned about; beyond them the
/// warning is logged at debug level.
const MAX_WARNED_DOMAINS: usize = 1024;

/// Column after which the signature header is folded.
const FOLD_AT: usize = 76;

/// A DKIM signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DkimAlgorithm {
    /// `rsa-sha256`: RSASSA-PKCS1-v1_5 with SHA-256 (RFC 6376).
    #[default]
    RsaSha256,
    /// `ed25519-sha256`: Ed25519 over the SHA-256 hash (RFC 8463).
    Ed25519Sha256,
}

impl DkimAlgorithm {
    /// The algorithm's name in the `a=` tag.
    pub fn name(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}

impl fmt::Display for DkimAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A DKIM configuration that cannot be used (bad domain or selector, unusable key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DkimError(pub String);

enum SigningKey {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// Signs messages for one domain with one key. Built once when the grant is loaded (every
/// configuration error shows then), shared by all of a relay's connections.
pub struct DkimSigner {
    domain: String,
    selector: String,
    algorithm: DkimAlgorithm,
    /// Header field names to sign, as configured, without duplicates (case-insensitively).
    headers: Vec<String>,
    key: SigningKey,
    rng: ring::rand::SystemRandom,
    /// From domains already warned about (messages sent unsigned).
    warned: Mutex<HashSet<String>>,
}

impl fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimSigner")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl DkimSigner {
    /// A signer for `domain` (`d=`) and `selector` (`s=`) with the private key `pem` (PKCS#8,
    /// or PKCS#1 for RSA), which must suit `algorithm`. `headers` are the header fields to sign
    /// (`None`: [`DEFAULT_SIGNED_HEADERS`]); `From` must be among them.
    pub fn new(
        domain: &str,
        selector: &str,
        algorithm: DkimAlgorithm,
        pem: &[u8],
        headers: Option<&[String]>,
    ) -> Result<DkimSigner, DkimError> {
        let domain = check_domain(domain)?;
        let selector = check_selector(selector)?;
        let headers = check_headers(headers)?;
        let key = parse_key(pem, algorithm)?;
        Ok(DkimSigner {
            domain,
            selector,
            algorithm,
            headers,
            key,
            rng: ring::rand::SystemRandom::new(),
            warned: Mutex::new(HashSet::new()),
        })
    }

    /// The signing domain (`d=`), lower-case.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The selector (`s=`).
    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// The signing algorithm.
    pub fn algorithm(&self) -> DkimAlgorithm {
        self.algorithm
    }

    /// The header fields signed when present.
    pub fn signed_headers(&self) -> &[String] {
        &self.headers
    }

    /// Whether a message from `from_domain` is signed: it is the signing domain or one of
    /// its subdomains (relaxed DMARC alignment).
    pub fn aligned(&self, from_domain: &str) -> bool {
        let from = from_domain.trim_end_matches('.').to_ascii_lowercase();
        from == self.domain
            || from
                .strip_suffix(self.domain.as_str())
                .is_some_and(|rest| rest.ends_with('.'))
    }

    /// `message` (RFC 5322 with CRLF line breaks) with a `DKIM-Signature` header in front,
    /// made at `timestamp` (seconds since the Unix epoch, the `t=` tag), if its `From` holds
    /// addresses that are all aligned with the signing domain; otherwise `None`, and a
    /// warning is logged the first time a From domain is seen. Fails only if the
    /// cryptographic library does (its random number generator).
    pub fn sign(&self, message: &[u8], timestamp: u64) -> Result<Option<Vec<u8>>, DkimError> {
        let (fields, body) = split_message(message);
        let from: Vec<&Field<'_>> = fields
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case("from"))
            .collect();
        let domains: Vec<String> = from
            .iter()
            .flat_map(|f| address_domains(&unfold(f.value)))
            .collect();
        let unaligned = if from.len() != 1 || domains.is_empty() {
            Some(match from.len() {
                0 => "(no From header)".to_string(),
                1 => "(no address in From)".to_string(),
                _ => "(several From headers)".to_string(),
            })
        } else {
            domains.iter().find(|d| !self.aligned(d)).cloned()
        };
        if let Some(domain) = unaligned {
            self.warn_unsigned(&domain);
            return Ok(None);
        }
        let header = self.signature_header(&fields, body, timestamp)?;
        let mut signed = Vec::with_capacity(header.len() + message.len());
        signed.extend_from_slice(header.as_bytes());
        signed.extend_from_slice(message);
        Ok(Some(signed))
    }

    fn warn_unsigned(&self, from_domain: &str) {
        let first = {
            let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
            warned.len() < MAX_WARNED_DOMAINS && warned.insert(from_domain.to_string())
        };
        if first {
            tracing::warn!(
                target: "herald_plugin",
                dkim_domain = %self.domain,
                from_domain,
                "message sent without a DKIM signature: its From domain is not {} or a subdomain of it (further messages from this domain are not reported)",
                self.domain
            );
        } else {
            tracing::debug!(target: "herald_plugin", dkim_domain = %self.domain, from_domain, "message sent without a DKIM signature (From not aligned)");
        }
    }

    /// The `DKIM-Signature` field (with its final CRLF) for a message split into `fields`
    /// and `body`.
    fn signature_header(
        &self,
        fields: &[Field<'_>],
        body: &[u8],
        timestamp: u64,
    ) -> Result<String, DkimError> {
        let body_hash = base64(&Sha256::digest(relaxed_body(body)));
        // h=: each configured name once per occurrence; the occurrences are hashed from the
        // last one up (RFC 6376 §5.4.2).
        let mut names = Vec::new();
        let mut hashed = Vec::new();
        for name in &self.headers {
            for field in fields.iter().rev() {
                if field.name.eq_ignore_ascii_case(name) {
                    names.push(name.as_str());
                    relaxed_header(field.name, field.value, &mut hashed);
                    hashed.extend_from_slice(b"\r\n");
                }
            }
        }
        let mut header = Folded::new("DKIM-Signature:");
        header.push(" v=1;");
        header.push(&format!(" a={};", self.algorithm.name()));
        header.push(" c=relaxed/relaxed;");
        header.push(&format!(" d={};", self.domain));
        header.push(&format!(" s={};", self.selector));
        header.push(&format!(" t={timestamp};"));
        for (i, name) in names.iter().enumerate() {
            let sep = if i + 1 < names.len() { ":" } else { ";" };
            if i == 0 {
                header.push(&format!(" h={name}{sep}"));
            } else {
                header.push(&format!("{name}{sep}"));
            }
        }
        header.push(&format!(" bh={body_hash};"));
        header.push(" b=");
        // The signature covers the signature field itself with an empty b=, without its
        // final CRLF (RFC 6376 §3.7).
        let (name, value) = header.text.split_once(':').expect("field name");
        relaxed_header(name, value.as_bytes(), &mut hashed);
        let signature = self.sign_bytes(&hashed)?;
        for chunk in base64(&signature).as_bytes().chunks(FOLD_AT - 8) {
            header.push(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        }
        header.text.push_str("\r\n");
        Ok(header.text)
    }

    fn sign_bytes(&self, data: &[u8]) -> Result<Vec<u8>, DkimError> {
        match &self.key {
            SigningKey::Rsa(key) => {
                let mut signature = vec![0; key.public().modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, &self.rng, data, &mut signature)
                    .map_err(|_| DkimError("RSA signing failed".into()))?;
                Ok(signature)
            }
            // RFC 8463 §3: Ed25519 signs the SHA-256 hash of the data.
            SigningKey::Ed25519(key) => Ok(key.sign(&Sha256::digest(data)).as_ref().to_vec()),
        }
    }
}

/// A header field being built, folded before [`FOLD_AT`] columns.
struct Folded {
    text: String,
    line_start: usize,
}

impl Folded {
    fn new(start: &str) -> Folded {
        Folded {
            text: start.to_string(),
            line_start: 0,
        }
    }

    /// Append `token`, on a new (tab-indented) line if it would not fit on this one. A
    /// token's leading space is dropped when it starts a line.
    fn push(&mut self, token: &str) {
        if self.text.len() - self.line_start + token.len() > FOLD_AT {
            self.text.push_str("\r\n");
            self.line_start = self.text.len();
            self.text.push('\t');
            self.text.push_str(token.trim_start_matches(' '));
        } else {
            self.text.push_str(token);
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn check_domain(domain: &str) -> Result<String, DkimError> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() {
        return Err(DkimError("`domain` is empty".into()));
    }
    if !d.is_ascii() {
        return Err(DkimError(format!(
            "domain `{domain}` is not ASCII; write an internationalised domain in its xn-- form"
        )));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !d.split('.').all(label_ok) {
        return Err(DkimError(format!("`{domain}` is not a domain name")));
    }
    Ok(d)
}

fn check_selector(selector: &str) -> Result<String, DkimError> {
    let s = selector.trim();
    if s.is_empty() {
        return Err(DkimError("`selector` is empty".into()));
    }
    let ok = s.split('.').all(|l| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !ok {
        return Err(DkimError(format!(
            "selector `{selector}` must be one or more dot-separated labels of letters, digits, - and _"
        )));
    }
    Ok(s.to_string())
}

fn check_headers(headers: Option<&[String]>) -> Result<Vec<String>, DkimError> {
    let list: Vec<String> = match headers {
        None => DEFAULT_SIGNED_HEADERS
            .iter()
            .map(|h| h.to_string())
            .collect(),
        Some(h) => h.iter().map(|h| h.trim().to_string()).collect(),
    };
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for name in list {
        if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
            return Err(DkimError(format!(
                "`headers`: `{name}` is not a header field name"
            )));
        }
        if name.eq_ignore_ascii_case("dkim-signature") {
            return Err(DkimError(
                "`headers`: DKIM-Signature is signed anyway and cannot be listed".into(),
            ));
        }
        if !out.iter().any(|h| h.eq_ignore_ascii_case(&name)) {
            out.push(name);
        }
    }
    if !out.iter().any(|h| h.eq_ignore_ascii_case("from")) {
        return Err(DkimError(
            "`headers` must include From (RFC 6376 requires it to be signed)".into(),
        ));
    }
    Ok(out)
}

fn parse_key(pem: &[u8], algorithm: DkimAlgorithm) -> Result<SigningKey, DkimError> {
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        DkimError(format!(
            "the private key is not a PEM private key (BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY): {e}"
        ))
    })?;
    let wrong = |found: &str| {
        DkimError(format!(
            "the private key is {found}, but `algorithm` is {algorithm}{}",
            match (found, algorithm) {
                ("an Ed25519 key", DkimAlgorithm::RsaSha256) =>
                    "; set algorithm = \"ed25519-sha256\"",
                ("an RSA key", DkimAlgorithm::Ed25519Sha256) => "; set algorithm = \"rsa-sha256\"",
                _ => "",
            }
        ))
    };
    match (&der, algorithm) {
        (PrivateKeyDer::Sec1(_), _) => Err(DkimError(
            "the private key is an EC key; DKIM signs with RSA (rsa-sha256) or Ed25519 (ed25519-sha256)"
                .into(),
        )),
        (PrivateKeyDer::Pkcs1(k), DkimAlgorithm::RsaSha256) => RsaKeyPair::from_der(k.secret_pkcs1_der())
            .map(SigningKey::Rsa)
            .map_err(rsa_rejected),
        (PrivateKeyDer::Pkcs1(_), DkimAlgorithm::Ed25519Sha256) => Err(wrong("an RSA key")),
        (PrivateKeyDer::Pkcs8(k), DkimAlgorithm::RsaSha256) => {
            let der = k.secret_pkcs8_der();
            match RsaKeyPair::from_pkcs8(der) {
                Ok(key) => Ok(SigningKey::Rsa(key)),
                Err(e) if e.to_string() == "WrongAlgorithm" => {
                    Err(wrong(pkcs8_kind(der)))
                }
                Err(e) => Err(rsa_rejected(e)),
            }
        }
        (PrivateKeyDer::Pkcs8(k), DkimAlgorithm::Ed25519Sha256) => {
            let der = k.secret_pkcs8_der();
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map(SigningKey::Ed25519)
                .map_err(|e| match e.to_string().as_str() {
                    "WrongAlgorithm" => wrong(pkcs8_kind(der)),
                    other => DkimError(format!("the Ed25519 private key is unusable ({other})")),
                })
        }
        _ => Err(DkimError("unsupported private key format".into())),
    }
}

/// What kind of key a PKCS#8 document holds, for error messages.
fn pkcs8_kind(der: &[u8]) -> &'static str {
    if Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).is_ok() {
        "an Ed25519 key"
    } else if RsaKeyPair::from_pkcs8(der).is_ok() {
        "an RSA key"
    } else {
        "neither an RSA nor an Ed25519 key"
    }
}

fn rsa_rejected(e: ring::error::KeyRejected) -> DkimError {
    DkimError(match e.to_string().as_str() {
        "TooSmall" => "the RSA key is too small: DKIM keys need at least 2048 bits".into(),
        "TooLarge" => "the RSA key is too large (at most 8192 bits)".into(),
        other => format!("the RSA private key is unusable ({other})"),
    })
}

/// One header field: its name and its raw value (everything after the colon, folding
/// included, without the final CRLF).
struct Field<'a> {
    name: &'a str,
    value: &'a [u8],
}

/// The header fields and the body of a CRLF message. Lines of the header section without a
/// colon (not header fields) are left out.
fn split_message(message: &[u8]) -> (Vec<Field<'_>>, &[u8]) {
    let mut fields: Vec<Field<'_>> = Vec::new();
    // (start, end) of the current field's raw bytes, without the final CRLF.
    let mut current: Option<(usize, usize)> = None;
    let mut pos = 0;
    let mut body_start = message.len();
    while pos < message.len() {
        let end = find_crlf(&message[pos..]).map(|i| pos + i);
        let line_end = end.unwrap_or(message.len());
        let next = end.map_or(message.len(), |e| e + 2);
        let line = &message[pos..line_end];
        if line.is_empty() {
            body_start = next;
            break;
        }
        if matches!(line[0], b' ' | b'\t') && current.is_some() {
            current = current.map(|(s, _)| (s, line_end));
        } else {
            push_field(message, current.take(), &mut fields);
            current = Some((pos, line_end));
        }
        pos = next;
    }
    push_field(message, current, &mut fields);
    (fields, &message[body_start.min(message.len())..])
}

fn push_field<'a>(message: &'a [u8], range: Option<(usize, usize)>, fields: &mut Vec<Field<'a>>) {
    let Some((start, end)) = range else { return };
    let raw = &message[start..end];
    if let Some(colon) = raw.iter().position(|&b| b == b':') {
        if let Ok(name) = std::str::from_utf8(&raw[..colon]) {
            fields.push(Field {
                name: name.trim_end_matches([' ', '\t']),
                value: &raw[colon + 1..],
            });
        }
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

/// A header value with its folding line breaks removed.
fn unfold(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    text.replace("\r\n", "")
}

/// Relaxed header canonicalization (RFC 6376 §3.4.2) of one field, without a final CRLF:
/// lower-case name, unfolded value with runs of white space as one space and none at either
/// end.
fn relaxed_header(name: &str, value: &[u8], out: &mut Vec<u8>) {
    out.extend(
        name.trim_end_matches([' ', '\t'])
            .bytes()
            .map(|b| b.to_ascii_lowercase()),
    );
    out.push(b':');
    let mut space = false;
    let mut started = false;
    for &b in value {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => space = true,
            _ => {
                if space && started {
                    out.push(b' ');
                }
                space = false;
                started = true;
                out.push(b);
            }
        }
    }
}

/// Relaxed body canonicalization (RFC 6376 §3.4.4): runs of white space in a line become one
/// space, white space at line ends and empty lines at the end go, and a non-empty body ends
/// with CRLF.
fn relaxed_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut empty_lines = 0usize;
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        match find_crlf(rest) {
            Some(i) => {
                lines.push(&rest[..i]);
                rest = &rest[i + 2..];
            }
            None => {
                lines.push(rest);
                rest = &[];
            }
        }
    }
    for line in lines {
        let mut canonical = Vec::with_capacity(line.len());
        let mut space = false;
        for &b in line {
            if b == b' ' || b == b'\t' {
                space = true;
            } else {
                if space {
                    canonical.push(b' ');
                }
                space = false;
                canonical.push(b);
            }
        }
        if canonical.is_empty() {
            empty_lines += 1;
            continue;
        }
        for _ in 0..empty_lines {
            out.extend_from_slice(b"\r\n");
        }
        empty_lines = 0;
        out.extend_from_slice(&canonical);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The domains of the addresses in a From value (`Name <a@b>`, `a@b (comment)`, lists).
fn address_domains(value: &str) -> Vec<String> {
    let mut addresses = Vec::new();
    let mut current = String::new();
    let mut angle: Option<String> = None;
    let mut chars = value.chars();
    let mut finish = |current: &mut String, angle: &mut Option<String>| {
        let address = angle.take().unwrap_or_else(|| current.trim().to_string());
        current.clear();
        if !address.is_empty() {
            addresses.push(address);
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                // A quoted display name or local part: copied, never split.
                current.push('"');
                while let Some(q) = chars.next() {
                    current.push(q);
                    match q {
                        '\\' => {
                            if let Some(e) = chars.next() {
                                current.push(e);
                            }
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '(' => {
                let mut depth = 1;
                while let Some(q) = chars.next() {
                    match q {
                        '\\' => {
                            chars.next();
                        }
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            '<' => {
                let mut addr = String::new();
                for q in chars.by_ref() {
                    if q == '>' {
                        break;
                    }
                    addr.push(q);
                }
                angle = Some(addr.trim().to_string());
            }
            // A group's name ends at ':' and the group at ';'.
            ':' if angle.is_none() => current.clear(),
            ',' | ';' => finish(&mut current, &mut angle),
            _ => current.push(c),
        }
    }
    finish(&mut current, &mut angle);
    addresses
        .iter()
        .filter_map(|a| a.rsplit_once('@'))
        .map(|(_, domain)| domain.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_PEM: &[u8] = include_bytes!("../tests/fixtures/dkim/rsa2048.pem");
    const RSA_PKCS1_PEM: &[u8] = include_bytes!("../tests/fixtures/dkim/rsa2048-pkcs1.pem");
    const ED25519_PEM: &[u8] = include_bytes!("../tests/fixtures/dkim/ed25519.pem");
    const RSA1024_PEM: &[u8] = include_bytes!("../tests/fixtures/dkim/rsa1024.pem");
    const P256_PEM: &[u8] = include_bytes!("../tests/fixtures/dkim/p256.pem");

    fn signer(algorithm: DkimAlgorithm, pem: &[u8]) -> Result<DkimSigner, DkimError> {
        DkimSigner::new("Shop.Example.", "s1", algorithm, pem, None)
    }

    fn err(r: Result<DkimSigner, DkimError>) -> String {
        r.expect_err("should be refused").0
    }

    #[test]
    fn relaxed_canonicalization_matches_rfc_6376_example() {
        // RFC 6376 §3.4.5.
        let message = b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n";
        let (fields, body) = split_message(message);
        let mut headers = Vec::new();
        for f in &fields {
            relaxed_header(f.name, f.value, &mut headers);
            headers.extend_from_slice(b"\r\n");
        }
        assert_eq!(headers, b"a:X\r\nb:Y Z\r\n");
        assert_eq!(relaxed_body(body), b" C\r\nD E\r\n");
    }

    #[test]
    fn relaxed_body_edge_cases() {
        assert_eq!(relaxed_body(b""), b"");
        assert_eq!(relaxed_body(b"\r\n\r\n"), b"");
        assert_eq!(relaxed_body(b"x"), b"x\r\n");
        assert_eq!(relaxed_body(b"a\r\n\r\nb \r\n \r\n"), b"a\r\n\r\nb\r\n");
    }

    #[test]
    fn messages_split_into_fields_and_body() {
        let (fields, body) = split_message(b"From: a@b\r\nSubject: x\r\n y\r\n\r\nbody\r\n");
        let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
        assert_eq!(names, ["From", "Subject"]);
        assert_eq!(fields[1].value, b" x\r\n y");
        assert_eq!(body, b"body\r\n");
        let (fields, body) = split_message(b"Subject: only headers\r\n");
        assert_eq!((fields.len(), body), (1, &b""[..]));
    }

    #[test]
    fn from_domains_are_found_in_every_address_form() {
        let cases = [
            ("news@Shop.Example", vec!["shop.example"]),
            ("\"Shop, News\" <news@shop.example>", vec!["shop.example"]),
            (
                "\"a <x@evil.example>\" <news@shop.example>",
                vec!["shop.example"],
            ),
            ("news@shop.example (the shop)", vec!["shop.example"]),
            (
                "=?utf-8?q?Gr=C3=BC=C3=9Fe?= <n@mail.shop.example>, b@other.example",
                vec!["mail.shop.example", "other.example"],
            ),
            (
                "Team: a@shop.example, b@shop.example;",
                vec!["shop.example", "shop.example"],
            ),
            ("nobody", vec![]),
        ];
        for (value, want) in cases {
            assert_eq!(address_domains(value), want, "{value}");
        }
    }

    #[test]
    fn alignment_is_the_domain_or_a_subdomain() {
        let s = signer(DkimAlgorithm::RsaSha256, RSA_PEM).unwrap();
        assert_eq!(s.domain(), "shop.example");
        assert!(s.aligned("shop.example"));
        assert!(s.aligned("MAIL.Shop.Example."));
        assert!(!s.aligned("badshop.example"));
        assert!(!s.aligned("example"));
        assert!(!s.aligned("shop.example.evil"));
    }

    #[test]
    fn signs_only_aligned_messages() {
        let s = signer(DkimAlgorithm::Ed25519Sha256, ED25519_PEM).unwrap();
        let signed = s
            .sign(
                b"From: <news@shop.example>\r\nSubject: hi\r\n\r\nbody\r\n",
                1,
            )
            .unwrap()
            .expect("aligned");
        let text = String::from_utf8(signed).unwrap();
        let unfolded = text.replace("\r\n\t", " ");
        assert!(
            unfolded.starts_with(
                "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=shop.example; s=s1; t=1; h=From:Subject; bh="
            ),
            "{text}"
        );
        assert!(text.ends_with("\r\nFrom: <news@shop.example>\r\nSubject: hi\r\n\r\nbody\r\n"));
        assert!(text.lines().all(|l| l.len() <= FOLD_AT + 2), "{text}");
        for unaligned in [
            &b"From: news@other.example\r\n\r\nx"[..],
            b"Subject: no from\r\n\r\nx",
            b"From: a@shop.example\r\nFrom: b@shop.example\r\n\r\nx",
            b"From: a@shop.example, b@other.example\r\n\r\nx",
        ] {
            assert_eq!(
                s.sign(unaligned, 1),
                Ok(None),
                "{}",
                String::from_utf8_lossy(unaligned)
            );
        }
    }

    #[test]
    fn an_unaligned_from_domain_is_reported_once() {
        let s = signer(DkimAlgorithm::RsaSha256, RSA_PEM).unwrap();
        for from in ["a@other.example", "b@Other.Example", "c@third.example"] {
            let message = format!("From: {from}\r\n\r\nx");
            assert_eq!(s.sign(message.as_bytes(), 1), Ok(None));
        }
        let warned = s.warned.lock().unwrap();
        let mut domains: Vec<&str> = warned.iter().map(String::as_str).collect();
        domains.sort();
        assert_eq!(domains, ["other.example", "third.example"]);
    }

    #[test]
    fn repeated_headers_are_listed_once_per_occurrence() {
        let s = DkimSigner::new(
            "shop.example",
            "s1",
            DkimAlgorithm::RsaSha256,
            RSA_PKCS1_PEM,
            Some(&["from".into(), "X-Tag".into(), "x-tag".into()]),
        )
        .unwrap();
        assert_eq!(s.signed_headers(), ["from", "X-Tag"]);
        let signed = s
            .sign(b"X-Tag: 1\r\nFrom: a@shop.example\r\nX-Tag: 2\r\n\r\n", 1)
            .unwrap()
            .unwrap();
        let text = String::from_utf8(signed).unwrap();
        assert!(text.contains(" h=from:X-Tag:X-Tag;"), "{text}");
    }

    #[test]
    fn bad_configurations_are_refused_with_the_reason() {
        let rsa = DkimAlgorithm::RsaSha256;
        let ed = DkimAlgorithm::Ed25519Sha256;
        let e = err(DkimSigner::new(" ", "s1", rsa, RSA_PEM, None));
        assert!(e.contains("`domain` is empty"), "{e}");
        let e = err(DkimSigner::new("shop example", "s1", rsa, RSA_PEM, None));
        assert!(e.contains("not a domain name"), "{e}");
        let e = err(DkimSigner::new("bücher.example", "s1", rsa, RSA_PEM, None));
        assert!(e.contains("xn--"), "{e}");
        let e = err(DkimSigner::new("shop.example", "", rsa, RSA_PEM, None));
        assert!(e.contains("`selector` is empty"), "{e}");
        let e = err(DkimSigner::new("shop.example", "a;b", rsa, RSA_PEM, None));
        assert!(e.contains("selector"), "{e}");
        let e = err(signer(rsa, ED25519_PEM));
        assert!(
            e.contains("an Ed25519 key") && e.contains("ed25519-sha256"),
            "{e}"
        );
        let e = err(signer(ed, RSA_PEM));
        assert!(
            e.contains("an RSA key") && e.contains("\"rsa-sha256\""),
            "{e}"
        );
        let e = err(signer(ed, RSA_PKCS1_PEM));
        assert!(e.contains("an RSA key"), "{e}");
        let e = err(signer(rsa, RSA1024_PEM));
        assert!(e.contains("at least 2048 bits"), "{e}");
        let e = err(signer(rsa, P256_PEM));
        assert!(e.contains("RSA") && e.contains("Ed25519"), "{e}");
        let e = err(signer(rsa, b"not a key"));
        assert!(e.contains("not a PEM private key"), "{e}");
        let no_from = ["To".to_string(), "Subject".to_string()];
        let e = err(DkimSigner::new(
            "shop.example",
            "s1",
            rsa,
            RSA_PEM,
            Some(&no_from),
        ));
        assert!(e.contains("must include From"), "{e}");
        let bad = ["From".to_string(), "Bad Name".to_string()];
        let e = err(DkimSigner::new(
            "shop.example",
            "s1",
            rsa,
            RSA_PEM,
            Some(&bad),
        ));
        assert!(e.contains("`Bad Name` is not a header field name"), "{e}");
    }

    #[test]
    fn debug_output_leaves_the_key_out() {
        let s = signer(DkimAlgorithm::RsaSha256, RSA_PEM).unwrap();
        let debug = format!("{s:?}");
        assert!(
            debug.contains("shop.example") && !debug.contains("key"),
            "{debug}"
        );
    }
}
