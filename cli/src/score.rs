//! `mmctl score`: rows scored with a model, from an OIP (or Azure ML) JSON body or a CSV
//! of rows, the answer printed one row per input row. The model's inputs come from its
//! metadata, and the answer is read, as the contract types them
//! (`manymodels_contract::oip`); `--json` prints the answer as the pool sent it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use manymodels_contract::oip::{InferResponse, ModelMetadata, TensorMetadata};
use serde::Serialize;
use serde_json::Value;

use crate::client::Client;
use crate::operate::Output;

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
    /// Records for many models (CSV with a header row, or JSON lines), each naming its
    /// model, sent to the many-model route (`POST /v2/mm/batch`); `-` reads stdin
    #[arg(long = "batch", value_name = "FILE")]
    pub batch: Option<PathBuf>,
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
    let infer = format!("{base}/infer");
    let answer = if let Some(path) = input.json_file.as_ref().or(input.body.as_ref()) {
        let text = read_input(path)?;
        let body: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        client.post(&infer, &body).await?
    } else {
        let path = input.csv.as_ref().expect("clap requires one input");
        let metadata: ModelMetadata = client
            .get_as(&base)
            .await
            .context("reading the model's inputs")?;
        let request = csv_request(&read_input(path)?, &metadata.inputs)
            .with_context(|| format!("{}", path.display()))?;
        client.post(&infer, &request).await?
    };
    // An OIP answer as a table; an Azure ML answer (a list of predictions) as it came.
    let json: Value = answer.read()?;
    let text = match serde_json::from_value::<InferResponse>(json.clone()) {
        Ok(response) => outputs_text(&response),
        Err(_) => format!("{json}\n"),
    };
    Ok(Output { json, text })
}

/// A file's text, or stdin's for `-`.
pub(crate) fn read_input(path: &Path) -> anyhow::Result<String> {
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

/// An OIP inference request: what `score` sends for CSV rows.
#[derive(Debug, PartialEq, Serialize)]
pub struct Request {
    pub inputs: Vec<Input>,
}

/// One input of a [`Request`].
#[derive(Debug, PartialEq, Serialize)]
pub struct Input {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<usize>,
    pub data: Vec<Value>,
}

/// CSV rows: the header row (when the first row names inputs, or is not numbers for a
/// model of numeric inputs) and the rows, all of one width.
struct Rows {
    header: Option<Vec<String>>,
    rows: Vec<Vec<String>>,
    width: usize,
}

impl Rows {
    fn parse(text: &str, inputs: &[TensorMetadata]) -> anyhow::Result<Rows> {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let Some(first) = lines.next() else {
            bail!("no rows");
        };
        let first = csv_fields(first);
        let all_numeric = inputs.iter().all(|i| i.datatype != "BYTES");
        let is_header = first.iter().any(|f| inputs.iter().any(|i| i.name == *f))
            || (all_numeric && first.iter().any(|f| f.parse::<f64>().is_err()));
        let (header, mut rows) = if is_header {
            (Some(first), Vec::new())
        } else {
            (None, vec![first])
        };
        rows.extend(lines.map(csv_fields));
        let width = rows.first().map_or(0, Vec::len);
        if let Some((n, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != width) {
            bail!(
                "row {} has {} columns, the first has {width}",
                n + 1 + usize::from(header.is_some()),
                row.len()
            );
        }
        Ok(Rows {
            header,
            rows,
            width,
        })
    }

    /// Column `column` of every row as `datatype`'s JSON values.
    fn column(&self, column: usize, datatype: &str) -> anyhow::Result<Vec<Value>> {
        self.rows
            .iter()
            .enumerate()
            .map(|(n, row)| cell(&row[column], datatype, n + 1))
            .collect()
    }
}

/// One CSV cell as a JSON value of `datatype` (`row` names it in an error).
fn cell(text: &str, datatype: &str, row: usize) -> anyhow::Result<Value> {
    Ok(match datatype {
        "BYTES" => Value::String(text.to_string()),
        "BOOL" => Value::Bool(matches!(text, "1" | "true" | "True" | "TRUE")),
        t if t.starts_with("FP") => Value::from(
            text.parse::<f64>()
                .with_context(|| format!("row {row}: '{text}' is not a number"))?,
        ),
        _ => Value::from(
            text.parse::<i64>()
                .with_context(|| format!("row {row}: '{text}' is not an integer"))?,
        ),
    })
}

/// An OIP request from CSV rows for a model whose inputs are `inputs`: one input of
/// shape `[-1, F]` takes every column; several inputs of shape `[-1, 1]` (or `[-1]`)
/// take one column each, matched by a header row's names or else in order.
pub fn csv_request(text: &str, inputs: &[TensorMetadata]) -> anyhow::Result<Request> {
    if inputs.is_empty() {
        bail!("the model declares no inputs");
    }
    let rows = Rows::parse(text, inputs)?;
    let (count, width) = (rows.rows.len(), rows.width);
    if let [input] = inputs {
        if let Some(&f) = input.shape.get(1).filter(|&&f| f > 0)
            && f as usize != width
        {
            bail!(
                "input '{}' takes {f} features per row, the rows have {width}",
                input.name
            );
        }
        let mut data = Vec::with_capacity(count * width);
        for (n, row) in rows.rows.iter().enumerate() {
            for text in row {
                data.push(cell(text, &input.datatype, n + 1)?);
            }
        }
        return Ok(Request {
            inputs: vec![Input {
                name: input.name.clone(),
                datatype: input.datatype.clone(),
                shape: vec![count, width],
                data,
            }],
        });
    }
    if width != inputs.len() {
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        bail!(
            "the model has {} inputs ({}), the rows have {width} columns",
            inputs.len(),
            names.join(", ")
        );
    }
    let columns = inputs.iter().enumerate().map(|(i, input)| {
        let column = match &rows.header {
            Some(header) => header
                .iter()
                .position(|h| *h == input.name)
                .with_context(|| format!("the header has no column '{}'", input.name))?,
            None => i,
        };
        Ok(Input {
            name: input.name.clone(),
            datatype: input.datatype.clone(),
            shape: if input.shape.len() == 1 {
                vec![count]
            } else {
                vec![count, 1]
            },
            data: rows.column(column, &input.datatype)?,
        })
    });
    Ok(Request {
        inputs: columns.collect::<anyhow::Result<_>>()?,
    })
}

/// One row per input row, one column per output column.
fn outputs_text(response: &InferResponse) -> String {
    let mut columns: Vec<(String, Vec<String>)> = Vec::new();
    for output in &response.outputs {
        let data: Vec<String> = output
            .data
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        let width = match output.shape.get(1..) {
            Some(rest) if !rest.is_empty() => rest.iter().product::<i64>().max(1) as usize,
            _ => 1,
        };
        for c in 0..width {
            let title = if width == 1 {
                output.name.clone()
            } else {
                format!("{}[{c}]", output.name)
            };
            columns.push((title, data.iter().skip(c).step_by(width).cloned().collect()));
        }
    }
    let rows = columns.iter().map(|c| c.1.len()).max().unwrap_or(0);
    let mut text = format!(
        "{} version {}\n",
        response.model_name, response.model_version
    );
    let titles = columns.iter().map(|c| c.0.as_str());
    let _ = writeln!(
        text,
        "{}",
        std::iter::once("ROW")
            .chain(titles)
            .collect::<Vec<_>>()
            .join("\t")
    );
    for r in 0..rows {
        let cells = columns
            .iter()
            .map(|c| c.1.get(r).cloned().unwrap_or_default());
        let cells: Vec<String> = std::iter::once(r.to_string()).chain(cells).collect();
        let _ = writeln!(text, "{}", cells.join("\t"));
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn inputs(json: Value) -> Vec<TensorMetadata> {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn csv_rows_become_one_input_or_one_column_per_input() {
        let one = inputs(json!([{ "name": "x", "datatype": "FP32", "shape": [-1, 3] }]));
        let request = csv_request("a,b,c\n1,2,3\n4,5,6.5\n", &one).unwrap();
        assert_eq!(request.inputs[0].shape, [2, 3]);
        assert_eq!(
            request.inputs[0].data,
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.5].map(Value::from)
        );
        let no_header = csv_request("1,2,3\n", &one).unwrap();
        assert_eq!(no_header.inputs[0].shape, [1, 3]);
        assert!(csv_request("1,2\n", &one).is_err(), "width must match");
        assert!(csv_request("1,2,3\n4,5\n", &one).is_err(), "ragged rows");
        assert!(csv_request("1,2,3\n4,x,6\n", &one).is_err(), "not a number");
        let columns = inputs(json!([
            { "name": "colour", "datatype": "BYTES", "shape": [-1, 1] },
            { "name": "size", "datatype": "FP32", "shape": [-1, 1] },
        ]));
        let request = csv_request("size,colour\n1.5,\"red, dark\"\n2,blue\n", &columns).unwrap();
        assert_eq!(
            request.inputs[0].data,
            ["red, dark", "blue"].map(Value::from)
        );
        assert_eq!(request.inputs[1].data, [1.5, 2.0].map(Value::from));
        assert_eq!(request.inputs[1].shape, [2, 1]);
        // What is sent is the OIP request's JSON.
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({ "inputs": [
                { "name": "colour", "datatype": "BYTES", "shape": [2, 1], "data": ["red, dark", "blue"] },
                { "name": "size", "datatype": "FP32", "shape": [2, 1], "data": [1.5, 2.0] },
            ] })
        );
    }

    #[test]
    fn outputs_print_one_column_per_output_column() {
        let response: InferResponse = serde_json::from_value(json!({
            "model_name": "m", "model_version": "2",
            "outputs": [
                { "name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0] },
                { "name": "p", "datatype": "FP32", "shape": [2, 2], "data": [0.25, 0.75, 0.5, 0.5] },
            ],
        }))
        .unwrap();
        assert_eq!(
            outputs_text(&response),
            "m version 2\nROW\tlabel\tp[0]\tp[1]\n0\t1\t0.25\t0.75\n1\t0\t0.5\t0.5\n"
        );
    }
}
