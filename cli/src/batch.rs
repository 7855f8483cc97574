//! `mmctl score --batch FILE`: records for many models from a CSV or JSON-lines file, sent
//! to the proxy's many-model route (`POST /v2/mm/batch`, `{"records": [...]}`) in chunks,
//! each answer read as the contract's `BatchAnswer` and printed in file order: one JSON line
//! per record (its `BatchResult`) or, with `--table`, a short table.
//!
//! A record keeps its fields in file order (the proxy reads named features in the order
//! sent): a JSON line is sent as its own text once checked to be an object; a CSV row
//! becomes an object of its header's names, a value written as a number sent as a number,
//! anything else as a string (`model` and `version` always as text).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use manymodels_contract::batch::{BATCH, BatchAnswer, BatchResult, RecordResult, Values};
use reqwest::Method;
use serde_json::Value;

use crate::client::Client;
use crate::table::Table;

/// Requests in flight at once (each a chunk); answers are still printed in file order.
const IN_FLIGHT: usize = 2;

/// What `--batch` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A header row of field names, then one record per row.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// `score --batch`'s options.
#[derive(Debug, clap::Args)]
pub struct BatchOptions {
    /// Records per request with --batch [default: 1000]
    #[arg(long)]
    pub chunk: Option<usize>,
    /// With --batch: a short table instead of one JSON line per record
    #[arg(long)]
    pub table: bool,
    /// The --batch file's format [default: from its extension (.csv; .jsonl, .ndjson,
    /// .json), else from its first line]
    #[arg(long, value_enum)]
    pub format: Option<Format>,
}

/// Records per request unless `--chunk` says.
pub const DEFAULT_CHUNK: usize = 1000;

impl BatchOptions {
    /// Whether any of these options was given (they go with `--batch` only).
    pub fn any(&self) -> bool {
        self.chunk.is_some() || self.table || self.format.is_some()
    }
}

/// Records read from a file: each one's JSON text and the line it starts on.
#[derive(Debug, Default, PartialEq)]
pub struct Records {
    pub texts: Vec<String>,
    pub lines: Vec<usize>,
}

/// Sends the file's records and prints the results; `Ok(false)` if any record failed.
pub async fn run(client: &Client, path: &Path, options: &BatchOptions) -> anyhow::Result<bool> {
    let chunk = options.chunk.unwrap_or(DEFAULT_CHUNK);
    if chunk == 0 {
        bail!("--chunk must be at least 1");
    }
    let text = crate::score::read_input(path)?;
    let format = options.format.unwrap_or_else(|| sniff(path, &text));
    let records = match format {
        Format::Csv => read_csv(&text),
        Format::Jsonl => read_jsonl(&text),
    }
    .with_context(|| path.display().to_string())?;
    if records.texts.is_empty() {
        bail!("{}: no records", path.display());
    }
    let total = records.texts.len();
    let chunks: Vec<(usize, Bytes)> = records
        .texts
        .chunks(chunk)
        .enumerate()
        .map(|(n, texts)| (n * chunk, body(texts)))
        .collect();
    let mut answers = futures::stream::iter(chunks)
        .map(|(first, body)| async move {
            let count = chunk.min(total - first);
            let answer = send(client, body, count).await;
            (first, count, answer)
        })
        .buffered(IN_FLIGHT);
    let mut failed = 0;
    let mut table = Table::new(&["LINE", "MODEL", "VERSION", "RESULT"]);
    let mut stdout = std::io::stdout().lock();
    while let Some((first, count, answer)) = answers.next().await {
        let answer = answer.with_context(|| {
            format!(
                "records {}-{} (from line {}) were not scored",
                first + 1,
                first + count,
                records.lines[first]
            )
        })?;
        for (i, result) in answer.results.iter().enumerate() {
            failed += usize::from(matches!(result.result, RecordResult::Failed { .. }));
            if options.table {
                table.row(row(records.lines[first + i], result));
            } else {
                writeln!(stdout, "{}", serde_json::to_string(result)?)?;
            }
        }
    }
    if options.table {
        write!(stdout, "{}", table.render())?;
    }
    stdout.flush()?;
    if failed > 0 {
        eprintln!("mmctl: {failed} of {total} records failed");
    }
    Ok(failed == 0)
}

/// One chunk's request; its answer must have one result per record.
async fn send(client: &Client, body: Bytes, count: usize) -> anyhow::Result<BatchAnswer> {
    let answer: BatchAnswer = client
        .call(Method::POST, BATCH, Some(body), Some("application/json"))
        .await?
        .read()?;
    if answer.results.len() != count {
        bail!(
            "the proxy answered {} results for {count} records",
            answer.results.len()
        );
    }
    Ok(answer)
}

/// `{"records": [...]}` of records' JSON texts.
fn body(texts: &[String]) -> Bytes {
    let mut body = String::with_capacity(texts.iter().map(|t| t.len() + 1).sum::<usize>() + 16);
    body.push_str("{\"records\":[");
    for (i, text) in texts.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(text);
    }
    body.push_str("]}");
    Bytes::from(body)
}

/// The format from the file's extension, else from its first non-empty line (`{`: JSON
/// lines).
fn sniff(path: &Path, text: &str) -> Format {
    let extension = PathBuf::from(path)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match extension.as_deref() {
        Some("csv") => Format::Csv,
        Some("jsonl" | "ndjson" | "json") => Format::Jsonl,
        _ if text
            .trim_start_matches('\u{feff}')
            .trim_start()
            .starts_with('{') =>
        {
            Format::Jsonl
        }
        _ => Format::Csv,
    }
}

/// JSON lines: each non-empty line must be a JSON object, sent as written.
pub fn read_jsonl(text: &str) -> anyhow::Result<Records> {
    let mut records = Records::default();
    for (n, line) in text.trim_start_matches('\u{feff}').lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(_)) => {}
            Ok(other) => bail!(
                "line {}: a record is a JSON object, not {}",
                n + 1,
                kind(&other)
            ),
            Err(e) => bail!("line {}: not a JSON object ({e})", n + 1),
        }
        records.texts.push(line.to_string());
        records.lines.push(n + 1);
    }
    Ok(records)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// CSV: a header row of field names, then one record per row (RFC 4180: commas, double
/// quotes around a field that holds commas, quotes (`""`) or line breaks; empty lines
/// skipped).
pub fn read_csv(text: &str) -> anyhow::Result<Records> {
    let rows = csv_rows(text.trim_start_matches('\u{feff}'))?;
    let mut rows = rows.into_iter();
    let Some((_, header)) = rows.next() else {
        bail!("no header row");
    };
    for (i, name) in header.iter().enumerate() {
        if name.is_empty() {
            bail!("line 1: header column {} has no name", i + 1);
        }
        if header[..i].contains(name) {
            bail!("line 1: header names '{name}' twice");
        }
    }
    let mut records = Records::default();
    for (line, fields) in rows {
        if fields.len() != header.len() {
            bail!(
                "line {line}: {} fields, the header has {}",
                fields.len(),
                header.len()
            );
        }
        let mut object = String::from("{");
        let mut first = true;
        for (name, field) in header.iter().zip(&fields) {
            let value = match name.as_str() {
                // Absent: the live version, or an id from key fields.
                "model" | "version" if field.is_empty() => continue,
                "model" | "version" => Value::String(field.clone()).to_string(),
                _ => csv_value(field),
            };
            if !first {
                object.push(',');
            }
            first = false;
            object.push_str(&Value::String(name.clone()).to_string());
            object.push(':');
            object.push_str(&value);
        }
        object.push('}');
        records.texts.push(object);
        records.lines.push(line);
    }
    Ok(records)
}

/// A CSV field as JSON text: a number when it reads as one (as written when it is a JSON
/// number; `+1`, `.5` normalised), except an integer written with leading zeros (`0042`,
/// an id more likely than a quantity), `nan` and `inf`; otherwise a string.
fn csv_value(field: &str) -> String {
    if serde_json::from_str::<serde_json::Number>(field).is_ok() {
        return field.to_string();
    }
    let digits = field.trim_start_matches(['+', '-']);
    let leading_zero = digits.len() > 1 && digits.starts_with('0') && !digits.starts_with("0.");
    match field.parse::<f64>() {
        Ok(v) if v.is_finite() && !leading_zero => Value::from(v).to_string(),
        _ => Value::String(field.to_string()).to_string(),
    }
}

/// The rows of a CSV text, each with the line it starts on. Unquoted fields are trimmed;
/// quoted ones kept as written between their quotes.
fn csv_rows(text: &str) -> anyhow::Result<Vec<(usize, Vec<String>)>> {
    let mut rows = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    // Whether the current field was quoted, and the line its quote opened on.
    let (mut quoted, mut in_quotes, mut quote_line) = (false, false, 0);
    let (mut line, mut row_line) = (1, 1);
    let mut chars = text.chars().peekable();
    let end_field = |field: &mut String, quoted: &mut bool, fields: &mut Vec<String>| {
        let text = std::mem::take(field);
        fields.push(if *quoted {
            text
        } else {
            text.trim().to_string()
        });
        *quoted = false;
    };
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.trim().is_empty() && !quoted => {
                field.clear();
                (quoted, in_quotes, quote_line) = (true, true, line);
            }
            '"' => bail!(
                "line {line}: a quote inside an unquoted field (quote the whole field, quotes doubled)"
            ),
            ',' => end_field(&mut field, &mut quoted, &mut fields),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                end_field(&mut field, &mut quoted, &mut fields);
                let row = std::mem::take(&mut fields);
                if !(row.len() == 1 && row[0].is_empty()) {
                    rows.push((row_line, row));
                }
                line += 1;
                row_line = line;
            }
            c if quoted && c.is_whitespace() => {}
            _ if quoted => bail!("line {line}: text after a quoted field's closing quote"),
            c => field.push(c),
        }
    }
    if in_quotes {
        bail!("line {quote_line}: a quoted field is never closed");
    }
    end_field(&mut field, &mut quoted, &mut fields);
    if !(fields.len() == 1 && fields[0].is_empty()) {
        rows.push((row_line, fields));
    }
    Ok(rows)
}

/// A table row for one record's result.
fn row(line: usize, result: &BatchResult) -> Vec<String> {
    let text = match &result.result {
        RecordResult::Scored { outputs } => outputs
            .iter()
            .map(|(name, values)| format!("{name}={}", values_text(values)))
            .collect::<Vec<_>>()
            .join(" "),
        RecordResult::Forecast { forecast } => format!(
            "forecast {}: {}",
            forecast.dates.join(" "),
            forecast
                .values
                .iter()
                .map(f32::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        ),
        RecordResult::Failed { error, status } => format!("failed {status}: {error}"),
    };
    vec![
        line.to_string(),
        result.model.clone().unwrap_or_else(|| "-".into()),
        result.model_version.clone().unwrap_or_else(|| "-".into()),
        text,
    ]
}

fn values_text(values: &Values) -> String {
    let items: Vec<String> = match values {
        Values::Ints(v) => v.iter().map(i64::to_string).collect(),
        Values::Floats(v) => v.iter().map(f32::to_string).collect(),
        Values::Doubles(v) => v.iter().map(f64::to_string).collect(),
        Values::Bools(v) => v.iter().map(bool::to_string).collect(),
        Values::Strings(v) => v.clone(),
    };
    match items.as_slice() {
        [one] => one.clone(),
        _ => format!("[{}]", items.join(",")),
    }
}

#[cfg(test)]
mod tests;
