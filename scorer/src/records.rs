//! The many-model route's scorer side: one model's group of records
//! (`contract::batch::RecordsRequest`), answered record by record
//! (`contract::batch::RecordsAnswer`).
//!
//! The model must take one FP32 input `[rows, features]`. Each record is checked alone
//! (feature count, column names against the model's declared columns, finite values; a
//! forecast against the model's forecast declaration); a record that fails gets its own
//! `RecordResult::Failed` with a 400 and the others go on. The valid plain records run as
//! one multi-row call; the forecasts run step by step (`forecast`), each step one call over
//! every series still going, each prediction fed back as the next step's lag.
//!
//! What fails the whole request (an unknown model, a malformed body, a model that does not
//! take records, the deadline, an engine failure) is the route's normal error answer.

use std::collections::BTreeMap;
use std::sync::Arc;

use manymodels_contract::batch::{
    Forecast, GroupAnswer, GroupsAnswer, GroupsRequest, RecordResult, RecordsAnswer,
    RecordsRequest, ScorerRecord, Values,
};
use manymodels_contract::forecast::{ForecastSpec, Plan};

use crate::Scorer;
use crate::engine::LoadedModel;
use crate::error::ScorerError;
use crate::infer::{self, Deadline};
use crate::ledger::Seen;
use crate::model_id::ModelId;
use crate::tensor::{DataType, NamedTensor, TensorData};

/// Parses a records body (before the model is looked up: a malformed body costs no load).
pub fn parse(body: &[u8]) -> Result<RecordsRequest, ScorerError> {
    serde_json::from_slice(body)
        .map_err(|e| ScorerError::invalid(format!("malformed records request: {e}")))
}

/// Parses a groups body (`contract::batch::GroupsRequest`).
pub fn parse_groups(body: &[u8]) -> Result<GroupsRequest, ScorerError> {
    serde_json::from_slice(body)
        .map_err(|e| ScorerError::invalid(format!("malformed record groups request: {e}")))
}

/// Answers several models' groups, each as [`answer`] answers one model's records (its
/// model looked up, loaded if need be, its version chosen once), the groups' loads and
/// runs interleaved; a group that fails (an invalid or unknown model, the deadline) fails
/// alone with the status its own request would have had.
pub async fn answer_groups(
    scorer: &Arc<Scorer>,
    deadline: Deadline,
    request: GroupsRequest,
) -> GroupsAnswer {
    let answers = request.groups.into_iter().map(|group| async move {
        let mut seen = Seen::default();
        let mut named = None;
        let answered = async {
            let id = ModelId::parse(&group.model)?;
            named = Some(id.clone());
            let (model, lookup) = infer::model_within(scorer, &id, group.version, deadline).await?;
            seen.version = Some(model.version);
            seen.lookup = Some(lookup);
            let records = RecordsRequest {
                records: group.records,
            };
            let answer = answer(scorer, &id, &model, deadline, records).await?;
            seen.rows = crate::http::scored(&answer);
            Ok::<_, ScorerError>((answer, lookup))
        }
        .await;
        // Each group is one request of its model in the ledger.
        scorer
            .ledger
            .observe(named.as_ref(), seen, answered.as_ref().err());
        match answered {
            Ok((answer, lookup)) => GroupAnswer::Answered {
                model_version: answer.model_version,
                cache: lookup.as_str().to_string(),
                failed: answer
                    .results
                    .iter()
                    .filter(|r| matches!(r, RecordResult::Failed { .. }))
                    .count(),
                results: answer.results,
            },
            Err(error) => {
                scorer
                    .metrics
                    .errors
                    .with_label_values(&[error.kind()])
                    .inc();
                GroupAnswer::Failed {
                    status: error.status().as_u16(),
                    error: error.to_string(),
                }
            }
        }
    });
    GroupsAnswer {
        groups: futures::future::join_all(answers).await,
    }
}

/// The width of the model's one FP32 `[rows, features]` input: the file's, else the
/// declaration's. A model without one does not take records (400).
fn width(model: &LoadedModel) -> Result<usize, ScorerError> {
    let refuse = |why: &str| {
        ScorerError::invalid(format!("model '{}' does not take records: {why}", model.id))
    };
    match model.inputs.as_slice() {
        [input] if input.datatype == DataType::Fp32 && input.shape.len() == 2 => {
            usize::try_from(input.shape[1])
                .ok()
                .filter(|&w| w > 0)
                .or_else(|| model.declaration.width())
                .ok_or_else(|| refuse("its input's width is not fixed and it declares no columns"))
        }
        _ => Err(refuse("its input must be one FP32 tensor [rows, features]")),
    }
}

/// Why a model cannot forecast (`None`: it can): it declares how, and it is a regressor
/// (one FP32 output, one value per row).
fn forecaster(model: &LoadedModel) -> Result<&ForecastSpec, String> {
    let spec = model.declaration.forecast.as_ref().ok_or_else(|| {
        format!(
            "model '{}' declares no forecast ({})",
            model.id,
            manymodels_contract::forecast::FORECAST_KEY
        )
    })?;
    match model.outputs.as_slice() {
        [output]
            if output.datatype == DataType::Fp32
                && output.shape.iter().skip(1).all(|&d| d == 1) =>
        {
            Ok(spec)
        }
        _ => Err(format!(
            "model '{}' cannot forecast: it needs one FP32 output with one value per row",
            model.id
        )),
    }
}

/// A record after its checks.
enum Checked {
    /// A plain record: its row (at this index of the plain call).
    Row(usize),
    /// A forecast: its plan (at this index of the forecasts).
    Forecast(usize),
    Failed(String),
}

/// Answers a group of records on `model` (already chosen: the version named, or the live
/// or canary arm for the whole request).
pub async fn answer(
    scorer: &Arc<Scorer>,
    id: &ModelId,
    model: &Arc<LoadedModel>,
    deadline: Deadline,
    request: RecordsRequest,
) -> Result<RecordsAnswer, ScorerError> {
    let width = width(model)?;
    let mut rows: Vec<f32> = Vec::new();
    let mut plans: Vec<(Plan, usize)> = Vec::new();
    // The rows whose records asked for contributions.
    let mut explained: Vec<usize> = Vec::new();
    let checked: Vec<Checked> = request
        .records
        .iter()
        .map(|record| match check(model, width, record) {
            Ok(Ready::Row(row)) => {
                rows.extend_from_slice(&row);
                if record.contributions {
                    explained.push(rows.len() / width - 1);
                }
                Checked::Row(rows.len() / width - 1)
            }
            Ok(Ready::Forecast(plan)) => {
                let history = plan.series.len();
                plans.push((plan, history));
                Checked::Forecast(plans.len() - 1)
            }
            Err(why) => Checked::Failed(why),
        })
        .collect();
    let max_elements = scorer.config.http.max_elements;
    let forecast_elements: usize = plans.iter().map(|(p, _)| p.dates.len() * width).sum();
    if rows.len().saturating_add(forecast_elements) > max_elements {
        return Err(ScorerError::invalid(format!(
            "the records need {} tensor elements, more than the limit of {max_elements}",
            rows.len().saturating_add(forecast_elements)
        )));
    }
    let mut picked = Vec::with_capacity(explained.len() * width);
    for &i in &explained {
        picked.extend_from_slice(&rows[i * width..(i + 1) * width]);
    }
    // Scored first: an explanation that runs out of the deadline fails only the records
    // that asked for one.
    let mut scored = if rows.is_empty() {
        Vec::new()
    } else {
        score_rows(scorer, id, model, deadline, rows, width).await?
    };
    let explanations = if explained.is_empty() {
        None
    } else {
        Some(explain_rows(scorer, id, model, deadline, picked, width).await)
    };
    // Each explained record's contributions beside its outputs; a model that cannot be
    // explained fails those records alone (422), as a bad record fails alone.
    let mut unexplained: Vec<(usize, RecordResult)> = Vec::new();
    match explanations {
        None => {}
        Some(Ok(per_row)) => {
            for (&i, extra) in explained.iter().zip(per_row) {
                scored[i].extend(extra);
            }
        }
        Some(Err(e)) => {
            let status = e.status().as_u16();
            unexplained = explained
                .iter()
                .map(|&i| (i, RecordResult::failed(status, e.to_string())))
                .collect();
        }
    }
    if !plans.is_empty() {
        let spec = forecaster(model).map_err(ScorerError::invalid)?;
        forecast(scorer, id, model, deadline, spec, &mut plans, width).await?;
    }
    let mut scored = scored.into_iter().map(Some).collect::<Vec<_>>();
    let results = checked
        .into_iter()
        .map(|c| match c {
            Checked::Row(i) => match unexplained.iter().position(|(row, _)| *row == i) {
                Some(k) => unexplained.swap_remove(k).1,
                None => RecordResult::Scored {
                    outputs: scored[i].take().expect("each row answered once"),
                },
            },
            Checked::Forecast(i) => {
                let (plan, history) = &plans[i];
                RecordResult::Forecast {
                    forecast: Forecast {
                        dates: plan.date_texts(),
                        values: plan.predictions(*history).to_vec(),
                    },
                }
            }
            Checked::Failed(error) => RecordResult::failed(400, error),
        })
        .collect();
    Ok(RecordsAnswer {
        model_name: id.to_string(),
        model_version: model.version.to_string(),
        results,
    })
}

/// A record ready to run.
enum Ready {
    Row(Vec<f32>),
    Forecast(Plan),
}

/// One record's checks: its row in the model's column order, or its forecast's plan.
fn check(model: &LoadedModel, width: usize, record: &ScorerRecord) -> Result<Ready, String> {
    let names = record.columns.as_deref();
    if record.contributions && record.forecast.is_some() {
        return Err("contributions are given for plain records, not forecasts".into());
    }
    match &record.forecast {
        None => model
            .declaration
            .arrange(&record.features, names, width)
            .map(Ready::Row),
        Some(ask) => {
            let spec = forecaster(model)?;
            spec.plan(
                ask.horizon,
                ask.frequency.as_deref(),
                &ask.dates,
                &ask.values,
                &record.features,
                names,
            )
            .map(Ready::Forecast)
        }
    }
}

/// Runs `rows` (`[n, width]`, row-major) through the model in one call. A lone row is
/// sent twice and answered once: ONNX Runtime's linear kernels answer one row (GEMV) and two
/// or more (GEMM) in last bits that differ (the native engine matches it bit for bit), so a
/// record's answer would otherwise depend on whether other records shared its call. With
/// at least two rows it does not.
async fn run_rows(
    scorer: &Arc<Scorer>,
    id: &ModelId,
    model: &Arc<LoadedModel>,
    deadline: Deadline,
    mut rows: Vec<f32>,
    width: usize,
    selected: Vec<usize>,
) -> Result<Vec<NamedTensor>, ScorerError> {
    let n = rows.len() / width;
    let lone = n == 1;
    if lone {
        rows.extend_from_within(..);
    }
    let input = rows_input(model, rows, width);
    let mut outputs = infer::run_checked(scorer, id, model, deadline, input, selected).await?;
    if lone {
        for output in &mut outputs {
            if output.shape.first() == Some(&2) {
                output.shape[0] = 1;
                output.data = first_half(std::mem::replace(
                    &mut output.data,
                    TensorData::Fp32(Vec::new()),
                ));
            }
        }
    }
    Ok(outputs)
}

/// The first half of `data` (the answer to the first of two equal rows).
fn first_half(data: TensorData) -> TensorData {
    fn half<T>(mut v: Vec<T>) -> Vec<T> {
        v.truncate(v.len() / 2);
        v
    }
    match data {
        TensorData::Fp32(v) => TensorData::Fp32(half(v)),
        TensorData::Fp64(v) => TensorData::Fp64(half(v)),
        TensorData::Int32(v) => TensorData::Int32(half(v)),
        TensorData::Int64(v) => TensorData::Int64(half(v)),
        TensorData::Bool(v) => TensorData::Bool(half(v)),
        TensorData::Bytes(v) => TensorData::Bytes(half(v)),
    }
}

fn broken(id: &ModelId, message: String) -> ScorerError {
    ScorerError::Inference {
        id: id.to_string(),
        message,
    }
}

/// Runs the plain records' rows in one call; per row, each output's row by name.
async fn score_rows(
    scorer: &Arc<Scorer>,
    id: &ModelId,
    model: &Arc<LoadedModel>,
    deadline: Deadline,
    rows: Vec<f32>,
    width: usize,
) -> Result<Vec<BTreeMap<String, Values>>, ScorerError> {
    let n = rows.len() / width;
    let all: Vec<usize> = (0..model.outputs.len()).collect();
    let outputs = run_rows(scorer, id, model, deadline, rows, width, all).await?;
    let mut answers: Vec<BTreeMap<String, Values>> = vec![BTreeMap::new(); n];
    for output in outputs {
        add_rows(id, &mut answers, output)?;
    }
    Ok(answers)
}

/// The `[n, width]` rows (row-major) as the model's one input.
fn rows_input(model: &LoadedModel, rows: Vec<f32>, width: usize) -> Vec<NamedTensor> {
    vec![NamedTensor {
        name: model.inputs[0].name.clone(),
        datatype: DataType::Fp32,
        shape: vec![(rows.len() / width) as i64, width as i64],
        data: TensorData::Fp32(rows),
    }]
}

/// Puts each row of `output` (one row per answer) into its answer, by the output's name.
fn add_rows(
    id: &ModelId,
    answers: &mut [BTreeMap<String, Values>],
    output: NamedTensor,
) -> Result<(), ScorerError> {
    let n = answers.len();
    if output.shape.first() != Some(&(n as i64)) || !output.data.len().is_multiple_of(n) {
        return Err(broken(
            id,
            format!(
                "output '{}' has shape {:?}, not one row per record ({n})",
                output.name, output.shape
            ),
        ));
    }
    let per = output.data.len() / n;
    let name = output.name;
    for (answer, row) in answers.iter_mut().zip(split(output.data, per)) {
        answer.insert(name.clone(), row);
    }
    Ok(())
}

/// The contributions of `rows` (`[n, width]`, row-major) in one call
/// (`infer::contributions`): per row, its `contributions` (`[targets × features]`,
/// target-major), the model's `expected_value` and its `raw_output`, as outputs by name.
async fn explain_rows(
    scorer: &Arc<Scorer>,
    id: &ModelId,
    model: &Arc<LoadedModel>,
    deadline: Deadline,
    rows: Vec<f32>,
    width: usize,
) -> Result<Vec<BTreeMap<String, Values>>, ScorerError> {
    infer::explainable(scorer, id, model)?;
    let n = rows.len() / width;
    let input = rows_input(model, rows, width);
    let outputs = infer::contributions(scorer, id, model, deadline, input).await?;
    let mut answers: Vec<BTreeMap<String, Values>> = vec![BTreeMap::new(); n];
    for output in outputs {
        match output {
            // One list, the same for every row.
            NamedTensor {
                name,
                data: TensorData::Fp64(values),
                ..
            } if name == crate::engine::EXPECTED_VALUE => {
                for answer in &mut answers {
                    answer.insert(name.clone(), Values::Doubles(values.clone()));
                }
            }
            output => add_rows(id, &mut answers, output)?,
        }
    }
    Ok(answers)
}

/// `data` cut into rows of `per` values.
fn split(data: TensorData, per: usize) -> Vec<Values> {
    fn rows<T: Clone>(v: Vec<T>, per: usize, make: impl Fn(Vec<T>) -> Values) -> Vec<Values> {
        if per == 0 {
            return Vec::new();
        }
        v.chunks(per).map(|c| make(c.to_vec())).collect()
    }
    match data {
        TensorData::Fp32(v) => rows(v, per, Values::Floats),
        TensorData::Fp64(v) => rows(v, per, Values::Doubles),
        TensorData::Int32(v) => rows(v, per, |r| {
            Values::Ints(r.into_iter().map(i64::from).collect())
        }),
        TensorData::Int64(v) => rows(v, per, Values::Ints),
        TensorData::Bool(v) => rows(v, per, Values::Bools),
        TensorData::Bytes(v) => rows(v, per, Values::Strings),
    }
}

/// The recursive forecasts: for each step, one row per series still going (built from
/// its history, then its own predictions), one call for them all, each prediction (the
/// FP32 output, exactly) fed back.
async fn forecast(
    scorer: &Arc<Scorer>,
    id: &ModelId,
    model: &Arc<LoadedModel>,
    deadline: Deadline,
    spec: &ForecastSpec,
    plans: &mut [(Plan, usize)],
    width: usize,
) -> Result<(), ScorerError> {
    let steps = plans.iter().map(|(p, _)| p.dates.len()).max().unwrap_or(0);
    for step in 0..steps {
        let going: Vec<usize> = (0..plans.len())
            .filter(|&i| plans[i].0.dates.len() > step)
            .collect();
        let mut rows = Vec::with_capacity(going.len() * width);
        for &i in &going {
            rows.extend(spec.row(&plans[i].0, step));
        }
        let outputs = run_rows(scorer, id, model, deadline, rows, width, vec![0]).await?;
        let predictions = match outputs.into_iter().next().map(|o| o.data) {
            Some(TensorData::Fp32(v)) if v.len() == going.len() => v,
            _ => {
                return Err(broken(
                    id,
                    format!(
                        "step {}: the output is not one FP32 value per series",
                        step + 1
                    ),
                ));
            }
        };
        for (&i, prediction) in going.iter().zip(predictions) {
            plans[i].0.push(prediction);
        }
    }
    Ok(())
}
