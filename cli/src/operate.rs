//! The commands that operate a running pool through its proxy: each is one or two calls
//! of the admin or pool API, printed as a table for people or as JSON (`--json`).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::client::Client;
use crate::table::{self, Table, opt};

/// What a command prints: the JSON for `--json`, the text otherwise.
pub struct Output {
    pub json: Value,
    pub text: String,
}

pub async fn models(client: &Client, prefix: Option<&str>) -> anyhow::Result<Output> {
    let answer = client
        .post("/v2/repository/index", &json!({}))
        .await
        .context("listing the store")?;
    let names: BTreeSet<String> = answer
        .body
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e["name"].as_str())
                .filter(|n| prefix.is_none_or(|p| n.starts_with(p)))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut text = String::new();
    for name in &names {
        let _ = writeln!(text, "{name}");
    }
    let _ = writeln!(text, "{} models", names.len());
    Ok(Output {
        json: json!(names),
        text,
    })
}

pub async fn versions(client: &Client, id: &str) -> anyhow::Result<Output> {
    let answer = client.get(&format!("/v2/admin/models/{id}")).await?;
    let body = answer.body;
    let live = body["live"].as_u64();
    let pinned = body["pinned"].as_u64();
    let canary = body["canary"]["version"].as_u64();
    let resident: Vec<u64> = numbers(&body["resident"]);
    let mut table = Table::new(&["VERSION", "LIVE", "PINNED", "CANARY", "IN MEMORY"]);
    for v in numbers(&body["versions"]) {
        let mark = |yes: bool| if yes { "yes" } else { "" }.to_string();
        table.row(vec![
            v.to_string(),
            mark(live == Some(v)),
            mark(pinned == Some(v)),
            match canary {
                Some(c) if c == v => format!("{}%", body["canary"]["percent"]),
                _ => String::new(),
            },
            mark(resident.contains(&v)),
        ]);
    }
    let mut text = format!("{id}\n{}", table.render());
    if let Some(refused) = body["refused"].as_object() {
        let _ = writeln!(
            text,
            "version {} was refused {:.0} s ago: {}",
            refused["version"],
            refused["seconds_ago"].as_f64().unwrap_or(0.0),
            refused["error"].as_str().unwrap_or("")
        );
    }
    Ok(Output { json: body, text })
}

pub async fn pin(client: &Client, id: &str, version: Option<u64>) -> anyhow::Result<Output> {
    let answer = match version {
        Some(v) => {
            client
                .post(
                    &format!("/v2/admin/models/{id}/pin"),
                    &json!({ "version": v }),
                )
                .await?
        }
        None => {
            client
                .post(&format!("/v2/admin/models/{id}/unpin"), &json!({}))
                .await?
        }
    };
    let text = refresh_text(&answer.body, version.is_some());
    Ok(Output {
        json: answer.body,
        text,
    })
}

fn refresh_text(body: &Value, pinned: bool) -> String {
    let model = body["model"].as_str().unwrap_or("");
    let live = body["live"].to_string();
    let mut text = if pinned {
        format!("{model}: pinned, version {live} is live")
    } else {
        format!("{model}: unpinned, version {live} is live")
    };
    if let Some(previous) = body["previous"].as_u64() {
        let _ = write!(text, " (was {previous})");
    }
    if let Some(refused) = body["refused"].as_object() {
        let _ = write!(
            text,
            "; version {} refused: {}",
            refused["version"],
            refused["error"].as_str().unwrap_or("")
        );
    }
    text.push('\n');
    text
}

#[derive(Debug, clap::Subcommand)]
pub enum CanaryCommand {
    /// Send PERCENT of ID's requests that name no version to VERSION
    Set {
        id: String,
        version: u64,
        /// 0-100, fractions allowed
        percent: f64,
    },
    /// The canary and what the answering scorer counted for it
    Show { id: String },
    /// Stop the canary: every request gets the live version again
    Drop { id: String },
    /// Pin the canary's version (it becomes live) and drop the canary
    Promote { id: String },
}

pub async fn canary(client: &Client, command: &CanaryCommand) -> anyhow::Result<Output> {
    let path = |id: &str| format!("/v2/admin/models/{id}/canary");
    let (answer, text) = match command {
        CanaryCommand::Set {
            id,
            version,
            percent,
        } => {
            if !(0.0..=100.0).contains(percent) {
                bail!("percent must be within 0-100, not {percent}");
            }
            let answer = client
                .put_json(
                    &path(id),
                    &json!({ "version": version, "percent": percent }),
                )
                .await?;
            let text =
                format!("{id}: {percent}% of unversioned requests go to version {version}\n");
            (answer, text)
        }
        CanaryCommand::Show { id } => {
            let answer = client.get(&path(id)).await?;
            let b = &answer.body["canary"];
            let text = if b["active"] == false {
                format!(
                    "{id}: canary of version {} ({}%) splits nothing: that version has left the store (drop it)\n",
                    b["version"], b["percent"],
                )
            } else {
                format!(
                    "{id}: version {} takes {}% of unversioned requests; {} of {} counted by {} went to it\n",
                    b["version"],
                    b["percent"],
                    b["to_canary"],
                    b["requests"],
                    answer.scorer.as_deref().unwrap_or("the answering scorer"),
                )
            };
            (answer, text)
        }
        CanaryCommand::Drop { id } => {
            let answer = client.delete(&path(id)).await?;
            (answer, format!("{id}: canary dropped\n"))
        }
        CanaryCommand::Promote { id } => {
            let answer = client
                .post(&format!("{}/promote", path(id)), &json!({}))
                .await?;
            let text = format!(
                "{id}: version {} promoted: pinned and live; canary dropped\n",
                answer.body["promoted"]["version"]
            );
            (answer, text)
        }
    };
    Ok(Output {
        json: answer.body,
        text,
    })
}

pub async fn status(client: &Client) -> anyhow::Result<Output> {
    let view = client.get("/v2/mm/pool").await?.body;
    let text = status_text(&view, 10);
    Ok(Output { json: view, text })
}

/// The pool view as text: the header line, the scorers, the hottest models and the
/// recent evictions (at most `rows` of each list).
pub fn status_text(view: &Value, rows: usize) -> String {
    let mut text = String::new();
    let ratio = view["hit_ratio"]
        .as_f64()
        .map_or("-".to_string(), |r| format!("{r:.3}"));
    let _ = writeln!(
        text,
        "proxy {} · up {} · {} requests · hit ratio {ratio} (last {} s)",
        view["proxy"].as_str().unwrap_or("?"),
        duration(view["uptime_seconds"].as_f64().unwrap_or(0.0)),
        view["requests"],
        view["history"].as_array().map_or(0, Vec::len) as u64
            * view["history_bucket_seconds"].as_u64().unwrap_or(0),
    );
    let mut scorers = Table::new(&[
        "SCORER", "ADDR", "HEALTHY", "RESIDENT", "BUDGET", "FILL", "MODELS", "HITS", "MISSES",
        "LOADS",
    ]);
    for s in view["scorers"].as_array().into_iter().flatten() {
        let resident = s["resident_bytes"].as_u64();
        let budget = s["budget_bytes"].as_u64();
        scorers.row(vec![
            s["name"].as_str().unwrap_or("").to_string(),
            s["addr"].as_str().unwrap_or("").to_string(),
            if s["healthy"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            }
            .to_string(),
            resident.map_or("-".into(), table::bytes),
            budget.map_or("-".into(), table::bytes),
            match (resident, budget) {
                (Some(r), Some(b)) if b > 0 => format!("{:.0}%", 100.0 * r as f64 / b as f64),
                _ => "-".into(),
            },
            opt(s["resident_models"].as_u64()),
            opt(s["hits"].as_u64()),
            opt(s["misses"].as_u64()),
            opt(s["loads"].as_u64()),
        ]);
    }
    text.push_str(&scorers.render());
    let mut hottest = Table::new(&["HOTTEST", "REQ/S", "OWNER"]);
    for h in view["hottest"].as_array().into_iter().flatten().take(rows) {
        hottest.row(vec![
            h["model"].as_str().unwrap_or("").to_string(),
            format!("{:.2}", h["rate"].as_f64().unwrap_or(0.0)),
            h["owner"].as_str().unwrap_or("-").to_string(),
        ]);
    }
    if !hottest.is_empty() {
        text.push('\n');
        text.push_str(&hottest.render());
    }
    let mut evictions = Table::new(&["EVICTED", "VERSION", "BYTES", "REASON", "SCORER", "AGO"]);
    for e in view["evictions"]
        .as_array()
        .into_iter()
        .flatten()
        .take(rows)
    {
        evictions.row(vec![
            e["model"].as_str().unwrap_or("").to_string(),
            e["version"].to_string(),
            table::bytes(e["bytes"].as_u64().unwrap_or(0)),
            e["reason"].as_str().unwrap_or("").to_string(),
            e["scorer"].as_str().unwrap_or("").to_string(),
            duration(e["seconds_ago"].as_f64().unwrap_or(0.0)),
        ]);
    }
    if !evictions.is_empty() {
        text.push('\n');
        text.push_str(&evictions.render());
    }
    text
}

pub async fn explain(client: &Client, id: &str) -> anyhow::Result<Output> {
    let placement = client
        .get(&format!("/v2/mm/pool/models/{id}"))
        .await
        .context("asking the proxy where it lives")?
        .body;
    let answer = client
        .get(&format!("/v2/admin/models/{id}/explain"))
        .await
        .context("asking the scorer")?;
    let scorer = answer.body;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{id}: live version {}, versions {}",
        opt(scorer["live"].as_u64()),
        numbers(&scorer["versions"])
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let ranking: Vec<String> = placement["ranking"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let mut name = s["name"].as_str().unwrap_or("?").to_string();
            if s["hot"].as_bool() == Some(true) {
                name.push_str(" (hot)");
            }
            if s["healthy"].as_bool() == Some(false) {
                name.push_str(" (unhealthy)");
            }
            name
        })
        .collect();
    let _ = writeln!(
        text,
        "where: owner {}; rendezvous order {}; pool rate {} req/s (this proxy's count)",
        placement["owner"].as_str().unwrap_or("none"),
        ranking.join(", "),
        placement["rate"]
            .as_f64()
            .map_or("-".into(), |r| format!("{r:.3}")),
    );
    let _ = writeln!(
        text,
        "on {}: {}",
        scorer["scorer"].as_str().unwrap_or("the scorer"),
        scorer["verdict"].as_str().unwrap_or("")
    );
    let mut resident = Table::new(&[
        "RESIDENT",
        "ENGINE",
        "BYTES",
        "PRIORITY",
        "EVICT RANK",
        "IDLE",
        "REQ/S",
        "POOL REQ/S",
    ]);
    for r in scorer["resident"].as_array().into_iter().flatten() {
        resident.row(vec![
            format!("v{}", r["version"]),
            r["engine"].as_str().unwrap_or("").to_string(),
            table::bytes(r["bytes"].as_u64().unwrap_or(0)),
            format!("{:.2}", r["priority"].as_f64().unwrap_or(0.0)),
            format!("{} of {}", r["evict_rank"], r["residents"]),
            duration(r["idle_seconds"].as_f64().unwrap_or(0.0)),
            format!("{:.3}", r["rate"].as_f64().unwrap_or(0.0)),
            format!("{:.3}", r["pool_rate"].as_f64().unwrap_or(0.0)),
        ]);
    }
    if !resident.is_empty() {
        text.push_str(&resident.render());
    }
    let mut evictions = Table::new(&["EVICTED", "BYTES", "REASON", "AGO"]);
    for e in scorer["evictions"].as_array().into_iter().flatten() {
        evictions.row(vec![
            format!("v{}", e["version"]),
            table::bytes(e["bytes"].as_u64().unwrap_or(0)),
            e["reason"].as_str().unwrap_or("").to_string(),
            duration(e["seconds_ago"].as_f64().unwrap_or(0.0)),
        ]);
    }
    if !evictions.is_empty() {
        text.push_str(&evictions.render());
    }
    Ok(Output {
        json: json!({ "placement": placement, "scorer": scorer }),
        text,
    })
}

/// `score`'s input: an OIP (or Azure ML) JSON body, or a CSV of rows.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ScoreInput {
    /// A request body as the pool takes it (OIP or Azure ML); `-` reads stdin
    #[arg(long = "json-file", value_name = "FILE")]
    pub json_file: Option<PathBuf>,
    /// A request body given as an argument, as `--json-file` takes it: with the global
    /// `--json`, `mmctl score ID --json FILE` sends FILE and prints the answer's JSON
    #[arg(value_name = "FILE")]
    pub body: Option<PathBuf>,
    /// Rows of features: one row per line, columns in input order (a header row naming
    /// the inputs is recognised); `-` reads stdin
    #[arg(long = "csv", value_name = "FILE")]
    pub csv: Option<PathBuf>,
}

pub async fn score(
    client: &Client,
    id: &str,
    version: Option<u64>,
    input: &ScoreInput,
) -> anyhow::Result<Output> {
    let base = match version {
        Some(v) => format!("/v2/models/{id}/versions/{v}"),
        None => format!("/v2/models/{id}"),
    };
    let body: Value = if let Some(path) = input.json_file.as_ref().or(input.body.as_ref()) {
        let text = read_input(path)?;
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?
    } else {
        let path = input.csv.as_ref().expect("clap requires one input");
        let metadata = client
            .get(&base)
            .await
            .context("reading the model's inputs")?;
        csv_request(&read_input(path)?, &metadata.body["inputs"])
            .with_context(|| format!("{}", path.display()))?
    };
    let answer = client.post(&format!("{base}/infer"), &body).await?;
    let text = outputs_text(&answer.body);
    Ok(Output {
        json: answer.body,
        text,
    })
}

fn read_input(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// Splits one CSV line: commas, double quotes around a field (`""` is a quote).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields.iter().map(|f| f.trim().to_string()).collect()
}

/// An OIP request from CSV rows for a model whose `inputs` metadata is given: one input
/// of shape `[-1, F]` takes every column; several inputs of shape `[-1, 1]` (or `[-1]`)
/// take one column each, matched by a header row's names or else in order.
pub fn csv_request(text: &str, inputs: &Value) -> anyhow::Result<Value> {
    let inputs = inputs
        .as_array()
        .filter(|i| !i.is_empty())
        .context("the model declares no inputs")?;
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let Some(first) = lines.next() else {
        bail!("no rows");
    };
    let first = csv_fields(first);
    let names: Vec<&str> = inputs.iter().filter_map(|i| i["name"].as_str()).collect();
    let all_numeric = inputs
        .iter()
        .all(|i| i["datatype"].as_str() != Some("BYTES"));
    let header = first.iter().any(|f| names.contains(&f.as_str()))
        || (all_numeric && first.iter().any(|f| f.parse::<f64>().is_err()));
    let mut rows: Vec<Vec<String>> = Vec::new();
    if !header {
        rows.push(first.clone());
    }
    rows.extend(lines.map(csv_fields));
    let width = rows[0].len();
    if let Some((n, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != width) {
        bail!(
            "row {} has {} columns, the first has {width}",
            n + 1 + header as usize,
            row.len()
        );
    }
    let value = |text: &str, datatype: &str, row: usize| -> anyhow::Result<Value> {
        Ok(match datatype {
            "BYTES" => Value::String(text.to_string()),
            "BOOL" => Value::Bool(matches!(text, "1" | "true" | "True" | "TRUE")),
            t if t.starts_with("FP") => json!(
                text.parse::<f64>()
                    .with_context(|| format!("row {row}: '{text}' is not a number"))?
            ),
            _ => json!(
                text.parse::<i64>()
                    .with_context(|| format!("row {row}: '{text}' is not an integer"))?
            ),
        })
    };
    let mut request_inputs = Vec::new();
    if inputs.len() == 1 {
        let input = &inputs[0];
        let datatype = input["datatype"].as_str().unwrap_or("FP32");
        let declared = input["shape"]
            .as_array()
            .and_then(|s| s.get(1))
            .and_then(Value::as_i64);
        if let Some(f) = declared.filter(|&f| f > 0)
            && f as usize != width
        {
            bail!(
                "input '{}' takes {f} features per row, the rows have {width}",
                names[0]
            );
        }
        let mut data = Vec::with_capacity(rows.len() * width);
        for (n, row) in rows.iter().enumerate() {
            for cell in row {
                data.push(value(cell, datatype, n + 1)?);
            }
        }
        request_inputs.push(json!({
            "name": names[0], "datatype": datatype, "shape": [rows.len(), width], "data": data,
        }));
    } else {
        if width != inputs.len() {
            bail!(
                "the model has {} inputs ({}), the rows have {width} columns",
                inputs.len(),
                names.join(", ")
            );
        }
        for (i, input) in inputs.iter().enumerate() {
            let name = input["name"].as_str().unwrap_or("");
            let column = if header {
                first
                    .iter()
                    .position(|h| h == name)
                    .with_context(|| format!("the header has no column '{name}'"))?
            } else {
                i
            };
            let datatype = input["datatype"].as_str().unwrap_or("FP32");
            let data = rows
                .iter()
                .enumerate()
                .map(|(n, row)| value(&row[column], datatype, n + 1))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let rank = input["shape"].as_array().map_or(2, Vec::len);
            let shape = if rank == 1 {
                json!([rows.len()])
            } else {
                json!([rows.len(), 1])
            };
            request_inputs.push(json!({
                "name": name, "datatype": datatype, "shape": shape, "data": data,
            }));
        }
    }
    Ok(json!({ "inputs": request_inputs }))
}

/// One row per input row, one column per output column.
fn outputs_text(body: &Value) -> String {
    let Some(outputs) = body["outputs"].as_array() else {
        return format!("{body}\n");
    };
    let mut columns: Vec<(String, Vec<String>)> = Vec::new();
    for output in outputs {
        let name = output["name"].as_str().unwrap_or("?");
        let shape = numbers(&output["shape"]);
        let data: Vec<String> = output["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        let width = if shape.len() >= 2 {
            shape[1..].iter().product::<u64>().max(1) as usize
        } else {
            1
        };
        for c in 0..width {
            let title = if width == 1 {
                name.to_string()
            } else {
                format!("{name}[{c}]")
            };
            columns.push((title, data.iter().skip(c).step_by(width).cloned().collect()));
        }
    }
    let rows = columns.iter().map(|c| c.1.len()).max().unwrap_or(0);
    let mut text = format!(
        "{} version {}\n",
        body["model_name"].as_str().unwrap_or(""),
        body["model_version"].as_str().unwrap_or("")
    );
    let _ = writeln!(
        text,
        "{}",
        std::iter::once("ROW".to_string())
            .chain(columns.iter().map(|c| c.0.clone()))
            .collect::<Vec<_>>()
            .join("\t")
    );
    for r in 0..rows {
        let cells: Vec<String> = std::iter::once(r.to_string())
            .chain(
                columns
                    .iter()
                    .map(|c| c.1.get(r).cloned().unwrap_or_default()),
            )
            .collect();
        let _ = writeln!(text, "{}", cells.join("\t"));
    }
    text
}

fn numbers(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

/// Seconds for people: `42 s`, `3m05s`, `2h07m`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    if s < 60 {
        format!("{seconds:.0} s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_become_one_input_or_one_column_per_input() {
        let one = json!([{ "name": "x", "datatype": "FP32", "shape": [-1, 3] }]);
        let request = csv_request("a,b,c\n1,2,3\n4,5,6.5\n", &one).unwrap();
        assert_eq!(request["inputs"][0]["shape"], json!([2, 3]));
        assert_eq!(
            request["inputs"][0]["data"],
            json!([1.0, 2.0, 3.0, 4.0, 5.0, 6.5])
        );
        let no_header = csv_request("1,2,3\n", &one).unwrap();
        assert_eq!(no_header["inputs"][0]["shape"], json!([1, 3]));
        assert!(csv_request("1,2\n", &one).is_err(), "width must match");
        assert!(csv_request("1,2,3\n4,5\n", &one).is_err(), "ragged rows");
        assert!(csv_request("1,2,3\n4,x,6\n", &one).is_err(), "not a number");
        let columns = json!([
            { "name": "colour", "datatype": "BYTES", "shape": [-1, 1] },
            { "name": "size", "datatype": "FP32", "shape": [-1, 1] },
        ]);
        let request = csv_request("size,colour\n1.5,\"red, dark\"\n2,blue\n", &columns).unwrap();
        assert_eq!(request["inputs"][0]["data"], json!(["red, dark", "blue"]));
        assert_eq!(request["inputs"][1]["data"], json!([1.5, 2.0]));
        assert_eq!(request["inputs"][1]["shape"], json!([2, 1]));
    }

    #[test]
    fn outputs_print_one_column_per_output_column() {
        let body = json!({
            "model_name": "m", "model_version": "2",
            "outputs": [
                { "name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0] },
                { "name": "p", "datatype": "FP32", "shape": [2, 2], "data": [0.25, 0.75, 0.5, 0.5] },
            ],
        });
        assert_eq!(
            outputs_text(&body),
            "m version 2\nROW\tlabel\tp[0]\tp[1]\n0\t1\t0.25\t0.75\n1\t0\t0.5\t0.5\n"
        );
    }
}
