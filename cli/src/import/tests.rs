//! The source scan.

use super::*;

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_source_is_flat_files_and_the_store_layout_side_by_side() {
    let dir = std::env::temp_dir().join(format!("mmctl-scan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write(&dir.join("a.onnx"), b"a");
    write(&dir.join("b/2/model.onnx"), b"b2");
    write(&dir.join("b/1/model.onnx"), b"b1");
    write(&dir.join("b/alias.json"), b"{}");
    write(&dir.join("b.onnx"), b"b-next");
    write(&dir.join("-bad.onnx"), b"x");
    write(&dir.join("notes.txt"), b"x");
    write(&dir.join("c/01/model.onnx"), b"leading zero");
    write(&dir.join("skip-me.onnx"), b"x");
    std::os::unix::fs::symlink(dir.join("a.onnx"), dir.join("linked.onnx")).unwrap();
    std::os::unix::fs::symlink(dir.join("absent"), dir.join("dangling.onnx")).unwrap();
    let source = scan(&dir, None).unwrap();
    assert_eq!(source.models["linked"][0].bytes, 1, "links are followed");
    assert!(source.ignored.iter().any(|p| p.ends_with("dangling.onnx")));
    let b: Vec<Option<u64>> = source.models["b"].iter().map(|i| i.version).collect();
    assert_eq!(
        b,
        [Some(1), Some(2), None],
        "versions ascending, then the flat file"
    );
    assert_eq!(source.models["a"][0].version, None);
    assert!(!source.models.contains_key("c"));
    assert_eq!(source.invalid.len(), 1);
    assert_eq!(source.invalid[0].model, "-bad");
    assert!(source.ignored.iter().any(|p| p.ends_with("notes.txt")));
    assert!(source.ignored.iter().any(|p| p.ends_with("01")));
    let only_b = scan(&dir, Some("b")).unwrap();
    assert_eq!(only_b.models.keys().collect::<Vec<_>>(), ["b"]);
    let one = scan(&dir.join("a.onnx"), None).unwrap();
    assert_eq!(one.models.keys().collect::<Vec<_>>(), ["a"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_folder_with_an_mlmodel_file_is_an_mlflow_model_named_by_the_folder() {
    let dir = std::env::temp_dir().join(format!("mmctl-scan-mlflow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write(&dir.join("churn/MLmodel"), b"flavors: {}\n");
    write(&dir.join("churn/model.skops"), b"x");
    write(&dir.join("bad id/MLmodel"), b"flavors: {}\n");
    write(&dir.join("flat.onnx"), b"x");
    write(&dir.join("layout/1/model.onnx"), b"x");
    let source = scan(&dir, None).unwrap();
    let mlflow: Vec<&str> = source.mlflow.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(
        mlflow,
        ["churn"],
        "converted before the import, not a store layout"
    );
    assert!(!source.models.contains_key("churn"));
    assert_eq!(source.models.keys().collect::<Vec<_>>(), ["flat", "layout"]);
    assert_eq!(source.invalid.len(), 1);
    assert_eq!(source.invalid[0].model, "bad id");
    assert!(source.ignored.is_empty(), "{:?}", source.ignored);
    assert!(scan(&dir, Some("flat")).unwrap().mlflow.is_empty());
    // The directory itself is one MLflow model.
    let one = scan(&dir.join("churn"), None).unwrap();
    assert_eq!(one.mlflow[0].id, "churn");
    assert!(one.models.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
