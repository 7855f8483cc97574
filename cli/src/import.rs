//! `mmctl import`: publishes a folder of models, checked first exactly as a scorer checks
//! a new version, in parallel, resumable, with a progress bar and a report.
//!
//! The unit of work is one model id: its files are published one after another (explicit
//! versions ascending, then a flat `<id>.onnx` as the next version), so two files of one
//! model never race for a version number; different models go in parallel (`--jobs`).
//! Checks load the model (native engine or an ONNX Runtime session, the scorer's own
//! code), so they are bounded separately (`--check-jobs`, default the machine's cores).

mod check;
mod mlflow;
mod progress;
mod report;
mod target;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use indicatif::ProgressBar;
use manymodels_store::{self as store, MODEL_FILE};
use serde::Serialize;

use crate::client::Client;
use crate::config::Settings;
use check::{Checked, Checker};
use progress::{Progress, progress_bar};
use report::render;
use target::{PublishError, Target};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A folder of `<id>.onnx` files, a store layout (`<id>/<version>/model.onnx`) and/or
    /// MLflow model directories (`<id>/MLmodel`), or one `.onnx` file or MLflow directory
    pub src: PathBuf,
    /// Where to publish: `api` (the proxy's admin API: the scorer checks each version again
    /// and makes it live at once) or `store` (straight into --store: scorers see a new
    /// model on its first request, a new version within `versions.check_interval`)
    #[arg(long, value_enum, default_value_t = Destination::Api)]
    pub to: Destination,
    /// Models imported at once
    #[arg(long, short = 'j', default_value_t = 8)]
    pub jobs: usize,
    /// Models checked at once (a check loads the model: CPU and memory) [default: cores]
    #[arg(long)]
    pub check_jobs: Option<usize>,
    /// Check everything and say what would be published, without writing
    #[arg(long)]
    pub dry_run: bool,
    /// Publish without the local check (the admin API still checks each model)
    #[arg(long)]
    pub no_check: bool,
    /// Only model ids starting with this
    #[arg(long)]
    pub prefix: Option<String>,
    /// Write every model's outcome as JSON to this file
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// No progress bar (it is also hidden when stderr is not a terminal, and with --json)
    #[arg(long)]
    pub no_progress: bool,
    /// libonnxruntime.so for the checks [default: beside mmctl, then .cache/onnxruntime/lib]
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub onnxruntime: Option<PathBuf>,
    /// The Python interpreter that converts MLflow model directories to ONNX (with
    /// models/requirements.txt installed)
    #[arg(long, env = "MMCTL_PYTHON", default_value = "python3")]
    pub python: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Destination {
    Api,
    Store,
}

/// One file to publish.
#[derive(Debug, Clone)]
struct Item {
    id: String,
    /// Given by the store layout; `None` for a flat file (the next version).
    version: Option<u64>,
    path: PathBuf,
    bytes: u64,
    /// The MLflow model directory `path` was converted from (what the report names).
    origin: Option<PathBuf>,
}

/// What happened to one file.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub model: String,
    pub version: Option<u64>,
    pub file: String,
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub outcome: Outcome,
    /// Why, for every outcome but `published`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The engine the check chose (`native` or `onnxruntime`) and the memory it measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Published,
    /// `--dry-run`: checked, would be published.
    WouldPublish,
    /// An identical version is already in the store.
    Skipped,
    /// The model (or its place) is at fault: fix it, then import again.
    Refused,
    /// The destination failed (unreachable, timeouts): import again to resume.
    Failed,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub source: String,
    pub destination: String,
    pub dry_run: bool,
    pub models: usize,
    pub files: usize,
    pub published: usize,
    pub would_publish: usize,
    pub skipped: usize,
    pub refused: usize,
    pub failed: usize,
    pub bytes: u64,
    pub published_bytes: u64,
    pub ignored_files: Vec<String>,
    pub seconds: f64,
    pub files_per_second: f64,
}

/// What the source holds: files by model id, and the files that are not models.
#[derive(Debug, Default)]
struct Source {
    models: BTreeMap<String, Vec<Item>>,
    /// Files or folders that are neither `<id>.onnx` nor `<id>/<version>/model.onnx`.
    ignored: Vec<String>,
    /// Files whose name is not a valid model id, refused without reading.
    invalid: Vec<Record>,
    /// MLflow model directories, converted before the import.
    mlflow: Vec<mlflow::MlflowDir>,
}

fn scan(src: &Path, prefix: Option<&str>) -> anyhow::Result<Source> {
    let mut source = Source::default();
    let wanted = |id: &str| prefix.is_none_or(|p| id.starts_with(p));
    let meta = std::fs::metadata(src).with_context(|| format!("cannot read {}", src.display()))?;
    if meta.is_file() {
        add_flat(&mut source, src, meta.len());
        return Ok(source);
    }
    if mlflow::is_mlflow_dir(src) {
        // The directory itself is one MLflow model, named by its own name.
        let name = src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .or_else(|| {
                std::fs::canonicalize(src)
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            })
            .unwrap_or_default();
        if wanted(&name) {
            add_mlflow(&mut source, &name, src);
        }
        return Ok(source);
    }
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .with_context(|| format!("cannot list {}", src.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        // Followed through symbolic links (a folder of links to trained models is common).
        let Ok(kind) = std::fs::metadata(&path) else {
            source.ignored.push(path.display().to_string());
            continue;
        };
        if kind.is_file() && name.ends_with(".onnx") {
            let id = name.trim_end_matches(".onnx");
            if wanted(id) {
                add_flat(&mut source, &path, kind.len());
            }
        } else if kind.is_dir() && mlflow::is_mlflow_dir(&path) {
            if wanted(&name) {
                add_mlflow(&mut source, &name, &path);
            }
        } else if kind.is_dir() {
            if !wanted(&name) {
                continue;
            }
            let before = source.models.get(&name).map_or(0, Vec::len);
            for version in std::fs::read_dir(&path)? {
                let version = version?;
                let vname = version.file_name().to_string_lossy().into_owned();
                let file = version.path().join(MODEL_FILE);
                match (store::parse_version(&vname), std::fs::metadata(&file)) {
                    (Some(v), Ok(meta)) if meta.is_file() => {
                        if manymodels_contract::valid_model_id(&name) {
                            source.models.entry(name.clone()).or_default().push(Item {
                                id: name.clone(),
                                version: Some(v),
                                path: file,
                                bytes: meta.len(),
                                origin: None,
                            });
                        } else {
                            source
                                .invalid
                                .push(invalid(&name, Some(v), &file, meta.len()));
                        }
                    }
                    _ if matches!(vname.as_str(), "alias.json" | "canary.json") => {}
                    _ => source.ignored.push(version.path().display().to_string()),
                }
            }
            if source.models.get(&name).map_or(0, Vec::len) == before
                && !source.invalid.iter().any(|r| r.model == name)
            {
                source.ignored.push(path.display().to_string());
            }
        } else {
            source.ignored.push(path.display().to_string());
        }
    }
    for items in source.models.values_mut() {
        // Explicit versions ascending, then the flat file (the next version).
        items.sort_by_key(|i| (i.version.is_none(), i.version));
    }
    Ok(source)
}

fn add_flat(source: &mut Source, path: &Path, bytes: u64) {
    let id = path
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".onnx").to_string())
        .unwrap_or_default();
    if manymodels_contract::valid_model_id(&id) {
        source.models.entry(id.clone()).or_default().push(Item {
            id,
            version: None,
            path: path.to_path_buf(),
            bytes,
            origin: None,
        });
    } else {
        source.invalid.push(invalid(&id, None, path, bytes));
    }
}

/// An MLflow model directory: converted before the import if its name is a valid id.
fn add_mlflow(source: &mut Source, id: &str, dir: &Path) {
    if manymodels_contract::valid_model_id(id) {
        source.mlflow.push(mlflow::MlflowDir {
            id: id.to_string(),
            dir: dir.to_path_buf(),
        });
    } else {
        source.invalid.push(invalid(id, None, dir, 0));
    }
}

fn invalid(id: &str, version: Option<u64>, path: &Path, bytes: u64) -> Record {
    Record {
        model: id.to_string(),
        version,
        file: path.display().to_string(),
        bytes,
        sha256: None,
        outcome: Outcome::Refused,
        detail: format!(
            "'{id}' is not a valid model id (1-{} characters of A-Z a-z 0-9 . _ -, not starting with . or -)",
            manymodels_contract::MAX_MODEL_ID_LEN
        ),
        engine: None,
        weight_bytes: None,
    }
}

/// Everything a model's import shares.
struct Shared {
    target: Target,
    /// `None` with `--no-check`.
    checker: Option<Checker>,
    dry_run: bool,
}

/// Imports the source into the destination and reports; `Ok(true)` if every file went in
/// or was there already, `Ok(false)` if any was refused or failed.
pub async fn run(settings: &Settings, args: Args) -> anyhow::Result<bool> {
    if args.jobs == 0 || args.check_jobs == Some(0) {
        bail!("--jobs and --check-jobs must be at least 1");
    }
    let started = Instant::now();
    let mut source = scan(&args.src, args.prefix.as_deref())?;
    let target = open_target(settings, args.to)?;
    // Kept until the import ends: it holds the converted files.
    let _converted = convert_mlflow(&args, &mut source).await?;
    let checker = if args.no_check {
        None
    } else {
        Some(Checker::new(args.onnxruntime.as_deref(), args.check_jobs)?)
    };
    let total_bytes: u64 = source.models.values().flatten().map(|i| i.bytes).sum();
    let bar = progress_bar(settings.json || args.no_progress, total_bytes);
    let context = Arc::new(Shared {
        target,
        checker,
        dry_run: args.dry_run,
    });
    let models = source.models.len();
    let mut records = import_models(&context, source.models, args.jobs, &bar).await;
    bar.finish_and_clear();
    records.extend(source.invalid);
    records.sort_by(|a, b| (&a.model, a.version).cmp(&(&b.model, b.version)));
    let summary = Summary::new(
        &args,
        context.target.describe(),
        models,
        &records,
        source.ignored,
        started,
    );
    let all_in = summary.refused == 0 && summary.failed == 0;
    report(settings, args.report.as_deref(), &summary, &records)?;
    Ok(all_in)
}

/// Converts the source's MLflow directories (one run of the converter), adding each
/// converted file as a flat item of its id and each refusal as a refused record.
async fn convert_mlflow(
    args: &Args,
    source: &mut Source,
) -> anyhow::Result<Option<mlflow::Converted>> {
    if source.mlflow.is_empty() {
        return Ok(None);
    }
    eprintln!(
        "converting {} MLflow model{} to ONNX with {} ...",
        source.mlflow.len(),
        if source.mlflow.len() == 1 { "" } else { "s" },
        args.python
    );
    let mut converted = mlflow::convert(&args.python, &source.mlflow).await?;
    for item in std::mem::take(&mut converted.items) {
        source.models.entry(item.id.clone()).or_default().push(item);
    }
    source.invalid.append(&mut converted.refused);
    Ok(Some(converted))
}

/// The destination `--to` names: the admin API through the configured proxy, or the
/// configured store, opened (an error if none is configured).
fn open_target(settings: &Settings, to: Destination) -> anyhow::Result<Target> {
    Ok(match to {
        Destination::Api => Target::Api(Client::new(settings)?),
        Destination::Store => {
            let Some(config) = &settings.store else {
                bail!(
                    "--to store needs a store: --store dir:PATH | azure://CONTAINER[/PREFIX] (or MMCTL_STORE, or `store` in the config file)"
                );
            };
            let opened = store::open(config, settings.timeout)
                .map_err(|e| anyhow::anyhow!("cannot open the store: {e}"))?;
            let described = opened.describe();
            Target::Store(opened, described)
        }
    })
}

/// The per-model task loop: up to `jobs` models at once, each model's files in order, each
/// model counted on the bar as it ends. The records come in the order the models end.
async fn import_models(
    context: &Arc<Shared>,
    models: BTreeMap<String, Vec<Item>>,
    jobs: usize,
    bar: &ProgressBar,
) -> Vec<Record> {
    let files: usize = models.values().map(Vec::len).sum();
    let progress = Arc::new(Progress::default());
    futures::stream::iter(models)
        .map(|(id, items)| {
            let (context, progress, bar) = (context.clone(), progress.clone(), bar.clone());
            async move {
                let records = import_model(&context, &id, items).await;
                progress.count(&records, &bar, files);
                records
            }
        })
        .buffer_unordered(jobs)
        .flat_map(futures::stream::iter)
        .collect()
        .await
}

impl Summary {
    /// The totals of an import's `records` (sorted, the invalid ones included), timed from
    /// `started` until now.
    fn new(
        args: &Args,
        destination: String,
        models: usize,
        records: &[Record],
        ignored_files: Vec<String>,
        started: Instant,
    ) -> Summary {
        let seconds = started.elapsed().as_secs_f64();
        let count = |o: Outcome| records.iter().filter(|r| r.outcome == o).count();
        Summary {
            source: args.src.display().to_string(),
            destination,
            dry_run: args.dry_run,
            models,
            files: records.len(),
            published: count(Outcome::Published),
            would_publish: count(Outcome::WouldPublish),
            skipped: count(Outcome::Skipped),
            refused: count(Outcome::Refused),
            failed: count(Outcome::Failed),
            bytes: records.iter().map(|r| r.bytes).sum(),
            published_bytes: records
                .iter()
                .filter(|r| r.outcome == Outcome::Published)
                .map(|r| r.bytes)
                .sum(),
            ignored_files,
            seconds,
            files_per_second: records.len() as f64 / seconds.max(1e-9),
        }
    }
}

/// The final report: as JSON to the `--report` file if one is named, then on stdout (the
/// same JSON with `--json`, else the text report).
fn report(
    settings: &Settings,
    file: Option<&Path>,
    summary: &Summary,
    records: &[Record],
) -> anyhow::Result<()> {
    let report = serde_json::json!({ "summary": summary, "models": records });
    if let Some(path) = file {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    if settings.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(summary, records));
    }
    Ok(())
}

/// Imports one model's files in order.
async fn import_model(context: &Shared, id: &str, items: Vec<Item>) -> Vec<Record> {
    let mut records = Vec::with_capacity(items.len());
    let (versions, live) = match context.target.existing(id).await {
        Ok(existing) => existing,
        Err(why) => {
            return items
                .into_iter()
                .map(|item| record(&item, None, Outcome::Failed, why.clone()))
                .collect();
        }
    };
    let mut known = Known {
        versions,
        live,
        ..Known::default()
    };
    for item in items {
        records.push(import_one(context, &item, &mut known).await);
    }
    records
}

fn record(item: &Item, version: Option<u64>, outcome: Outcome, detail: String) -> Record {
    Record {
        model: item.id.clone(),
        version: version.or(item.version),
        file: item
            .origin
            .as_ref()
            .unwrap_or(&item.path)
            .display()
            .to_string(),
        bytes: item.bytes,
        sha256: None,
        outcome,
        detail,
        engine: None,
        weight_bytes: None,
    }
}

/// What an import has learned about one model: its versions at the destination
/// (ascending) and its live one, digests read from the destination, and the bytes of the
/// version it just published (or, in a dry run, would have), against which the model's
/// next file is checked.
#[derive(Default)]
struct Known {
    versions: Vec<u64>,
    live: Option<u64>,
    digests: Digests,
    published: Option<(u64, Bytes)>,
}

impl Known {
    /// Takes in a version this import published (or, in a dry run, would have).
    fn add(&mut self, version: u64, sha: &str, bytes: Bytes) {
        if !self.versions.contains(&version) {
            self.versions.push(version);
            self.versions.sort_unstable();
        }
        self.digests.0.insert(version, sha.to_string());
        self.live = self.versions.last().copied();
        if self.live == Some(version) {
            self.published = Some((version, bytes));
        }
    }
}

/// The sha256 of versions at the destination, by version.
#[derive(Default)]
struct Digests(HashMap<u64, String>);

impl Digests {
    /// A version's sha256, read from the destination only the first time.
    async fn get(&mut self, target: &Target, id: &str, version: u64) -> Result<String, String> {
        if let Some(known) = self.0.get(&version) {
            return Ok(known.clone());
        }
        let digest = target.digest(id, version).await?;
        self.0.insert(version, digest.clone());
        Ok(digest)
    }
}

/// Imports one file: reads and hashes it, then skips, checks and publishes it as
/// [`place`] says. Every record but an unreadable file's carries the file's sha256.
async fn import_one(context: &Shared, item: &Item, known: &mut Known) -> Record {
    let bytes = match tokio::fs::read(&item.path).await {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => return record(item, None, Outcome::Refused, format!("cannot read it: {e}")),
    };
    let sha = {
        let bytes = bytes.clone();
        tokio::task::spawn_blocking(move || store::sha256_hex(&bytes))
            .await
            .expect("hashing does not panic")
    };
    let mut result = place(context, item, known, bytes, &sha)
        .await
        .unwrap_or_else(|ended| ended);
    result.sha256 = Some(sha);
    result
}

/// One read file's way in: the version it becomes (or its end, as `Err`, if the
/// destination has it already), the check, the upload, and the outcome taken into `known`.
async fn place(
    context: &Shared,
    item: &Item,
    known: &mut Known,
    bytes: Bytes,
    sha: &str,
) -> Result<Record, Record> {
    let version = version_for(context, item, known, sha).await?;
    let checked = check(context, item, version, &bytes, known).await?;
    let mut result = match upload(context, item, version, bytes.clone(), sha).await {
        Ok(outcome) => {
            known.add(version, sha, bytes);
            record(item, Some(version), outcome, String::new())
        }
        Err((outcome, why)) => record(item, Some(version), outcome, why),
    };
    if let Some(checked) = checked {
        result.engine = Some(checked.engine);
        result.weight_bytes = Some(checked.weight);
    }
    Ok(result)
}

/// The digest check against the existing versions, so an import resumes: an explicit
/// version already there ends the file (skipped if identical, else refused); a flat file
/// identical to any version is skipped, and otherwise becomes the version after the last.
async fn version_for(
    context: &Shared,
    item: &Item,
    known: &mut Known,
    sha: &str,
) -> Result<u64, Record> {
    match item.version {
        Some(v) if known.versions.contains(&v) => Err(
            match known.digests.get(&context.target, &item.id, v).await {
                Ok(d) if d == sha => record(
                    item,
                    Some(v),
                    Outcome::Skipped,
                    "already in the store".into(),
                ),
                Ok(d) => record(
                    item,
                    Some(v),
                    Outcome::Refused,
                    format!(
                        "version {v} is already in the store with other content (sha256 {}…, this file {}…)",
                        &d[..12.min(d.len())],
                        &sha[..12]
                    ),
                ),
                Err(why) => record(item, Some(v), Outcome::Failed, why),
            },
        ),
        Some(v) => Ok(v),
        None => {
            for &v in known.versions.iter().rev() {
                match known.digests.get(&context.target, &item.id, v).await {
                    Ok(d) if d == sha => {
                        return Err(record(
                            item,
                            Some(v),
                            Outcome::Skipped,
                            format!("identical to version {v}, already in the store"),
                        ));
                    }
                    Ok(_) => {}
                    Err(why) => return Err(record(item, None, Outcome::Failed, why)),
                }
            }
            Ok(known.versions.last().map_or(1, |v| v + 1))
        }
    }
}

/// The local check (`None` with `--no-check`) against the live version: the bytes this
/// import just published if they are live, else as read from the destination.
async fn check(
    context: &Shared,
    item: &Item,
    version: u64,
    bytes: &Bytes,
    known: &Known,
) -> Result<Option<Checked>, Record> {
    let Some(checker) = &context.checker else {
        return Ok(None);
    };
    let old = match known.live {
        Some(live) if known.published.as_ref().is_some_and(|p| p.0 == live) => {
            known.published.clone()
        }
        Some(live) => match context.target.read(&item.id, live).await {
            Ok(old) => old.map(|old| (live, old)),
            Err(why) => return Err(record(item, Some(version), Outcome::Failed, why)),
        },
        None => None,
    };
    match checker.check(&item.id, version, bytes.clone(), old).await {
        Ok(c) => Ok(Some(c)),
        Err(why) => Err(record(item, Some(version), Outcome::Refused, why)),
    }
}

/// The upload (each call to the destination tried again on a transient failure, see
/// [`Target`]; nothing in a dry run). A conflict is a resume if the version written
/// meanwhile is this file. `Err` is the outcome other than published, and why.
async fn upload(
    context: &Shared,
    item: &Item,
    version: u64,
    bytes: Bytes,
    sha: &str,
) -> Result<Outcome, (Outcome, String)> {
    if context.dry_run {
        return Ok(Outcome::WouldPublish);
    }
    match context.target.publish(&item.id, version, bytes).await {
        Ok(()) => Ok(Outcome::Published),
        // Someone published this version meanwhile: the same file is a resume.
        Err(PublishError::Conflict) => match context.target.digest(&item.id, version).await {
            Ok(d) if d == sha => Err((
                Outcome::Skipped,
                "already in the store (written meanwhile)".to_string(),
            )),
            Ok(_) => Err((
                Outcome::Refused,
                format!("version {version} was written meanwhile with other content"),
            )),
            Err(why) => Err((Outcome::Failed, why)),
        },
        Err(PublishError::Refused(why)) => Err((Outcome::Refused, why)),
        Err(PublishError::Failed(why)) => Err((Outcome::Failed, why)),
    }
}

#[cfg(test)]
mod tests;
