//! `models/convert/convert.py` end to end: one model of each family (a scikit-learn
//! regressor and classifier, LightGBM, XGBoost), trained, saved the library's own way and
//! converted into a fresh store by `tests/convert_check.py`, then scored through a real
//! `mm-scorer` behind `mm-proxy` and compared with the library's own predictions
//! (rtol 1e-4, atol 1e-5; labels exact). The script also checks the refusals: corrupt and
//! unsupported files exit 1 and write nothing, `--dir` converts the good files and reports
//! the bad ones, and a scikit-learn HistGradientBoosting regressor whose float64 split
//! threshold (1e8 + 60) becomes 1e8 + 64 in float32 sends a training row down the other
//! branch in ONNX (0 where the library says 1): refused, the mismatch and its row named,
//! nothing written.

use std::path::Path;
use std::process::Command;

use manymodels_tests::process::Pool;
use manymodels_tests::{TempDir, root};

fn convert_check(store: &Path, extra: &[&str]) {
    let output = Command::new("python3")
        .arg(root().join("tests/convert_check.py"))
        .arg(store)
        .args(extra)
        .output()
        .expect("running python3");
    assert!(
        output.status.success(),
        "tests/convert_check.py {extra:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    print!("{}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn converted_models_of_every_family_score_like_their_library() {
    let work = TempDir::new("convert");
    let store = work.path().join("store");
    convert_check(&store, &[]);
    let pool = Pool::local(&store, 1, &[], &[]);
    let host = pool.proxy.url.trim_start_matches("http://").to_string();
    convert_check(&store, &["--check", &host]);
}
