//! CSV contact import: header mapping, typed columns, validation with a report per bad row.
//! Each good row becomes one `identify`, so identities merge exactly as live traffic does, and a
//! row is imported whole or not at all.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::ingest::{validate, IngestError, Ingestor, Message};

/// Options of an import (query parameters of `POST /v1/import/contacts`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImportOptions {
    /// Column holding the user id (default: the first of `user_id`, `userId`, `id`, `email`).
    pub id: Option<String>,
    /// Column types, `column:type` separated by commas; types are `string`, `int`, `float`,
    /// `bool` and `date` (RFC 3339 or `YYYY-MM-DD`).
    pub types: Option<String>,
    /// Column renames, `CSV header:attribute` separated by commas.
    pub map: Option<String>,
}

/// One refused row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RowError {
    /// 1-based line in the file (the header is line 1).
    pub line: u64,
    /// Why it was refused.
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImportReport {
    /// Rows stored.
    pub imported: usize,
    /// Rows identical to an earlier import (skipped).
    pub unchanged: usize,
    /// Rows refused, with line and reason: the first [`MAX_REPORTED_ROWS`] of them.
    pub rejected: Vec<RowError>,
    /// How many rows were refused in all.
    pub rejected_count: usize,
    /// The id column used.
    pub id_column: String,
    /// Attribute names, after mapping.
    pub attributes: Vec<String>,
}

fn pairs(spec: &Option<String>) -> Vec<(String, String)> {
    spec.as_deref()
        .unwrap_or("")
        .split(',')
        .filter_map(|p| p.rsplit_once(':'))
        .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
        .collect()
}

fn convert(ty: &str, raw: &str) -> Result<Value, String> {
    match ty {
        "int" => raw
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("\"{raw}\" is not an integer")),
        "float" => raw
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::from)
            .ok_or_else(|| format!("\"{raw}\" is not a number")),
        "bool" => match raw.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Ok(json!(true)),
            "false" | "no" | "0" => Ok(json!(false)),
            _ => Err(format!("\"{raw}\" is not true/false")),
        },
        "date" => {
            let instant = herald_dsl::engine::parse_rfc3339_ms(raw).is_some();
            let day = raw.len() == 10
                && herald_dsl::engine::parse_rfc3339_ms(&format!("{raw}T00:00:00Z")).is_some();
            if instant || day {
                Ok(json!(raw))
            } else {
                Err(format!("\"{raw}\" is not a date (YYYY-MM-DD or RFC 3339)"))
            }
        }
        "string" | "" => Ok(json!(raw)),
        other => Err(format!("unknown column type \"{other}\"")),
    }
}

fn plausible_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !s.contains(' ')
        }
        None => false,
    }
}

/// Refused rows listed in a report (all of them are counted).
pub const MAX_REPORTED_ROWS: usize = 1000;

/// Rows imported together (one ingest request each).
const CHUNK_ROWS: usize = 1000;

/// The refused rows of an import: the first [`MAX_REPORTED_ROWS`] kept, all counted.
#[derive(Default)]
struct Refused {
    rows: Vec<RowError>,
    count: usize,
}

impl Refused {
    fn push(&mut self, row: RowError) {
        self.count += 1;
        if self.rows.len() < MAX_REPORTED_ROWS {
            self.rows.push(row);
        }
    }
}

/// Parse, validate and import a CSV file, read as it goes: rows are imported a chunk at a
/// time, so memory does not grow with the file.
pub async fn import_csv(
    ingestor: &Ingestor,
    input: impl std::io::Read,
    opts: &ImportOptions,
) -> Result<ImportReport, IngestError> {
    let bad = |m: String| IngestError::Invalid {
        code: "invalid_csv",
        message: m,
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(input);
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| bad(format!("header row: {e}")))?
        .iter()
        .map(String::from)
        .collect();
    if headers.is_empty() || headers.iter().all(|h| h.is_empty()) {
        return Err(bad("the file has no header row".into()));
    }
    let renames = pairs(&opts.map);
    let names: Vec<String> = headers
        .iter()
        .map(|h| {
            renames
                .iter()
                .find(|(from, _)| from == h)
                .map(|(_, to)| to.clone())
                .unwrap_or_else(|| h.clone())
        })
        .collect();
    let id_column = match &opts.id {
        Some(c) => c.clone(),
        None => ["user_id", "userId", "id", "email"]
            .iter()
            .find(|c| names.iter().any(|n| n == *c))
            .map(|c| c.to_string())
            .ok_or_else(|| {
                bad(format!(
                    "no id column: name one with ?id=, or add user_id, id or email (columns: {})",
                    names.join(", ")
                ))
            })?,
    };
    let id_index = names.iter().position(|n| *n == id_column).ok_or_else(|| {
        bad(format!(
            "the id column \"{id_column}\" is not in the header ({})",
            names.join(", ")
        ))
    })?;
    let types = pairs(&opts.types);
    for (col, ty) in &types {
        if !names.contains(col) {
            return Err(bad(format!(
                "a type is given for \"{col}\", which is not a column"
            )));
        }
        convert(ty, "")
            .err()
            .filter(|e| e.starts_with("unknown"))
            .map_or(Ok(()), |e| Err(bad(e)))?;
    }
    let mut messages: Vec<Message> = Vec::with_capacity(CHUNK_ROWS);
    // The line of each message, to report the ones a contact limit drops.
    let mut lines: Vec<u64> = Vec::with_capacity(CHUNK_ROWS);
    let mut rejected = Refused::default();
    let mut imported = 0;
    let mut unchanged = 0;
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                rejected.push(RowError {
                    line,
                    reason: format!("unreadable row: {e}"),
                });
                continue;
            }
        }
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let id = record.get(id_index).unwrap_or("").to_string();
        if id.is_empty() {
            rejected.push(RowError {
                line,
                reason: format!("the id column \"{id_column}\" is empty"),
            });
            continue;
        }
        let mut traits = Map::new();
        let mut problems = Vec::new();
        for (i, raw) in record.iter().enumerate() {
            if i == id_index && id_column != "email" || raw.is_empty() {
                continue;
            }
            let name = &names[i];
            let ty = types
                .iter()
                .find(|(c, _)| c == name)
                .map(|(_, t)| t.as_str())
                .unwrap_or("string");
            match convert(ty, raw) {
                Ok(v) => {
                    if name == "email" && !plausible_email(raw) {
                        problems.push(format!("email \"{raw}\" is not an email address"));
                    }
                    traits.insert(name.clone(), v);
                }
                Err(e) => problems.push(format!("{name}: {e}")),
            }
        }
        if !problems.is_empty() {
            rejected.push(RowError {
                line,
                reason: problems.join("; "),
            });
            continue;
        }
        // The same row imported twice is recognised by its content.
        let digest = hex::encode(
            &Sha256::digest(format!("{id}\u{1f}{}", Value::Object(traits.clone())).as_bytes())
                [..12],
        );
        let msg = json!({"type": "identify", "userId": id, "traits": traits, "messageId": format!("import-{digest}"),
                         "context": {"library": {"name": "herald-import"}}});
        let size = msg.to_string().len();
        match validate(Some("identify"), msg, size, None) {
            Ok(m) => {
                lines.push(line);
                messages.push(m);
                if messages.len() == CHUNK_ROWS {
                    let (i, u) =
                        import_chunk(ingestor, &mut messages, &mut lines, &mut rejected).await?;
                    imported += i;
                    unchanged += u;
                }
            }
            Err(e) => rejected.push(RowError {
                line,
                reason: e.to_string(),
            }),
        }
    }
    if !messages.is_empty() {
        let (i, u) = import_chunk(ingestor, &mut messages, &mut lines, &mut rejected).await?;
        imported += i;
        unchanged += u;
    }
    let mut attributes: Vec<String> = names.iter().filter(|n| **n != id_column).cloned().collect();
    attributes.sort();
    let mut rows = rejected.rows;
    rows.sort_by_key(|r| r.line);
    Ok(ImportReport {
        imported,
        unchanged,
        rejected: rows,
        rejected_count: rejected.count,
        id_column,
        attributes,
    })
}

/// Import one chunk of rows (emptied), recording the rows a contact limit or an erasure drops.
async fn import_chunk(
    ingestor: &Ingestor,
    messages: &mut Vec<Message>,
    lines: &mut Vec<u64>,
    rejected: &mut Refused,
) -> Result<(usize, usize), IngestError> {
    let mut chunk = std::mem::take(messages);
    for (i, m) in chunk.iter_mut().enumerate() {
        m.index = i;
    }
    let a = ingestor.ingest(chunk).await?;
    for r in a.rejected {
        rejected.push(RowError {
            line: lines[r.index],
            reason: r.message,
        });
    }
    lines.clear();
    Ok((a.accepted, a.duplicates))
}
