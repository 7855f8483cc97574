//! MLflow model directories in an import. A directory holding an `MLmodel` file is
//! converted to ONNX by the project's converter (`models/convert/convert.py --mlflow`,
//! compiled into mmctl so any install carries the recipes it was built with) in one run of
//! a Python interpreter, which checks each result against the original library on sample
//! rows; each ONNX file then goes through the import like a flat `<id>.onnx` (the scorer's
//! check, resume by content hash: the converter writes the same bytes for the same model).
//! A directory the converter refuses is a refused record naming the reason.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use serde::Deserialize;

use super::{Item, Outcome, Record};

/// The converter, as built into this mmctl.
const CONVERTER: &str = include_str!("../../../models/convert/convert.py");

/// The file that makes a directory an MLflow model.
pub(super) const MLMODEL: &str = "MLmodel";

/// Whether `dir` is an MLflow model directory.
pub(super) fn is_mlflow_dir(dir: &Path) -> bool {
    dir.join(MLMODEL).is_file()
}

/// One MLflow directory to convert, and the model id it becomes.
#[derive(Debug, Clone)]
pub(super) struct MlflowDir {
    pub(super) id: String,
    pub(super) dir: PathBuf,
}

/// What the converter made of the directories: items to import, refusals, and the
/// folder holding the ONNX files (removed when this is dropped).
pub(super) struct Converted {
    pub(super) items: Vec<Item>,
    pub(super) refused: Vec<Record>,
    _work: WorkDir,
}

/// One JSON line of `convert.py --mlflow ... --out`.
#[derive(Debug, Deserialize)]
struct Line {
    mlflow: String,
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    refused: Option<String>,
}

/// Converts `dirs` with `python`: one run of the converter for all of them.
pub(super) async fn convert(python: &str, dirs: &[MlflowDir]) -> anyhow::Result<Converted> {
    let work = WorkDir::new()?;
    let script = work.0.join("convert.py");
    let out = work.0.join("onnx");
    std::fs::create_dir_all(&out)?;
    std::fs::write(&script, CONVERTER)?;
    let output = tokio::process::Command::new(python)
        .arg(&script)
        .arg("--mlflow")
        .args(dirs.iter().map(|d| &d.dir))
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run the Python interpreter '{python}' to convert MLflow models ({e}): \
                 name one with --python or MMCTL_PYTHON (it needs models/requirements.txt installed)"
            )
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0 | 1) => {}
        Some(3) => bail!(
            "{python} cannot convert MLflow models: {}",
            stderr
                .trim()
                .lines()
                .last()
                .unwrap_or("missing Python packages")
        ),
        _ => bail!(
            "the MLflow converter ({python} convert.py --mlflow) failed ({}):\n{}",
            output.status,
            tail(&stderr, 20)
        ),
    }
    let lines = parse_lines(&stdout)?;
    let mut converted = Converted {
        items: Vec::new(),
        refused: Vec::new(),
        _work: work,
    };
    for dir in dirs {
        let shown = dir.dir.display().to_string();
        let line = lines.iter().find(|l| l.mlflow == shown);
        let refuse = |why: String| Record {
            model: dir.id.clone(),
            version: None,
            file: shown.clone(),
            bytes: 0,
            sha256: None,
            outcome: Outcome::Refused,
            detail: why,
            engine: None,
            weight_bytes: None,
        };
        match line {
            Some(Line {
                file: Some(file), ..
            }) => {
                let bytes = std::fs::metadata(file)
                    .with_context(|| format!("the converter's file {}", file.display()))?
                    .len();
                converted.items.push(Item {
                    id: dir.id.clone(),
                    version: None,
                    path: file.clone(),
                    bytes,
                    origin: Some(dir.dir.clone()),
                });
            }
            Some(Line {
                refused: Some(why), ..
            }) => converted
                .refused
                .push(refuse(format!("the MLflow model does not convert: {why}"))),
            _ => converted.refused.push(refuse(format!(
                "the converter said nothing about it:\n{}",
                tail(&stderr, 10)
            ))),
        }
    }
    Ok(converted)
}

/// The converter's JSON lines (anything else it prints is not read).
fn parse_lines(stdout: &str) -> anyhow::Result<Vec<Line>> {
    stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| {
            serde_json::from_str(l).with_context(|| {
                format!("the MLflow converter printed a line mmctl cannot read: {l}")
            })
        })
        .collect()
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A private folder under the system's temp directory, removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> anyhow::Result<WorkDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("mmctl-mlflow-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot make a work folder {}", path.display()))?;
        Ok(WorkDir(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_converters_lines_are_read_and_other_output_skipped() {
        let out = "converting\n{\"mlflow\": \"a\", \"id\": \"a\", \"file\": \"/t/a.onnx\", \"detail\": \"ok\"}\n\
                   {\"mlflow\": \"b\", \"id\": \"b\", \"refused\": \"MLflow flavor pytorch is not converted here\"}\n";
        let lines = parse_lines(out).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].file.as_deref(), Some(Path::new("/t/a.onnx")));
        assert!(lines[1].refused.as_deref().unwrap().contains("pytorch"));
        assert!(parse_lines("{not json\n").is_err());
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
    }
}
