use super::{fast, general};
use crate::attrs::Attrs;

/// The corpus's tree ensembles (every family the exporters write, and the operator
/// models made to stress the layout): where the one-pass path accepts a model it
/// decodes exactly what the general path makes, and it accepts every exported one.
#[test]
fn the_fast_path_decodes_what_the_general_path_does() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/corpus");
    let (mut fast_paths, mut general_only) = (Vec::new(), Vec::new());
    for dir in [root.clone(), root.join("ops")] {
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("the corpus is committed")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
            .collect();
        files.sort();
        for path in files {
            let bytes = std::fs::read(&path).expect("readable");
            let model = crate::onnx::parse(&bytes).expect("the corpus parses");
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            for node in &model.graph.nodes {
                let classifier = match node.op_type {
                    "TreeEnsembleClassifier" => true,
                    "TreeEnsembleRegressor" => false,
                    _ => continue,
                };
                let attrs = Attrs::new(node).expect("no graphs");
                let n_outputs = if classifier {
                    let ints = attrs.ints("classlabels_int64s").unwrap().len();
                    ints.max(attrs.strings("classlabels_strings").unwrap().len())
                } else {
                    attrs.int("n_targets").unwrap_or(1) as usize
                };
                let fast32 = fast::decode::<f32>(&attrs, classifier, n_outputs);
                let fast64 = fast::decode::<f64>(&attrs, classifier, n_outputs);
                assert_eq!(fast32.is_some(), fast64.is_some(), "{name}");
                let Some(fast32) = fast32 else {
                    general_only.push(name.clone());
                    continue;
                };
                let general32 = general::decode::<f32>(node, &attrs, classifier, n_outputs)
                    .unwrap_or_else(|e| panic!("{name}: the general path refuses: {e}"));
                assert_eq!(format!("{fast32:?}"), format!("{general32:?}"), "{name}");
                let general64 = general::decode::<f64>(node, &attrs, classifier, n_outputs)
                    .unwrap_or_else(|e| panic!("{name}: the general path refuses: {e}"));
                assert_eq!(
                    format!("{:?}", fast64.unwrap()),
                    format!("{general64:?}"),
                    "{name}"
                );
                fast_paths.push(name.clone());
            }
        }
    }
    println!("one pass: {fast_paths:?}\ngeneral only: {general_only:?}");
    assert!(fast_paths.len() >= 30, "{fast_paths:?}");
    // LightGBM lists a tree's nodes in its own order, XGBoost's categorical splits
    // share children, and the operator models are made out of order on purpose.
    let expected = [
        "lgbm_",
        "xgb_reg_cat",
        "te_ids_",
        "te_order_",
        "te_tree_ids_",
    ];
    for name in &general_only {
        assert!(
            expected.iter().any(|p| name.starts_with(p)),
            "{name} takes the general path"
        );
    }
    assert!(general_only.iter().any(|n| n == "te_order_postorder"));
}
