use manymodels_contract::batch::{BatchAnswer, RecordResult, ScorerRecord};

use super::*;

fn parsed(targets: Vec<Result<Target, Refused>>) -> Vec<Parsed> {
    targets
        .into_iter()
        .map(|target| Parsed {
            target,
            record: ScorerRecord::default(),
        })
        .collect()
}

/// A scorer's answer for a group, counting its failures as the scorer does.
fn answered(version: &str, results: &[&str]) -> Outcome {
    Outcome::Answered(Answered {
        model_version: version.into(),
        results: results
            .iter()
            .map(|r| RawValue::from_string(r.to_string()).unwrap())
            .collect(),
        failed: results
            .iter()
            .filter(|r| {
                serde_json::from_str::<RecordResult>(r)
                    .is_ok_and(|r| matches!(r, RecordResult::Failed { .. }))
            })
            .count(),
    })
}

fn target(id: &str) -> Target {
    (id.to_string(), None)
}

#[test]
fn results_come_back_in_the_request_order_each_with_its_model() {
    let records = parsed(vec![
        Ok(target("a")),
        Ok(target("b")),
        Err(Refused {
            status: 403,
            error: "not yours".into(),
            model: Some("c".into()),
        }),
        Ok(target("a")),
        Ok(target("d")),
        Ok(target("e")),
    ]);
    // Groups finish in any order (`buffer_unordered`).
    let outcomes = vec![
        (
            target("b"),
            vec![1],
            answered(
                "7",
                &[r#"{"forecast":{"dates":["2026-01-08"],"values":[1.5]}}"#],
            ),
        ),
        (
            target("a"),
            vec![0, 3],
            answered(
                "2",
                &[
                    r#"{"outputs":{"variable":[0.25]}}"#,
                    r#"{"error":"4 features, the model takes 3","status":400}"#,
                ],
            ),
        ),
        (
            target("d"),
            vec![4],
            Outcome::Failed(Refused {
                status: 404,
                error: "no model 'd'".into(),
                model: Some("d".into()),
            }),
        ),
        // A scorer answering the wrong number of results fails its records.
        (target("e"), vec![5], answered("1", &[])),
    ];
    let (body, failed) = assemble(records, outcomes);
    assert_eq!(failed, 4);
    let answer: BatchAnswer = serde_json::from_str(&body).unwrap();
    assert_eq!((answer.models, answer.failed), (4, 4));
    let models: Vec<_> = answer.results.iter().map(|r| r.model.as_deref()).collect();
    assert_eq!(
        models,
        [
            Some("a"),
            Some("b"),
            Some("c"),
            Some("a"),
            Some("d"),
            Some("e")
        ]
    );
    assert_eq!(answer.results[0].model_version.as_deref(), Some("2"));
    assert!(
        matches!(&answer.results[0].result, RecordResult::Scored { outputs } if outputs.contains_key("variable"))
    );
    assert!(
        matches!(&answer.results[1].result, RecordResult::Forecast { forecast } if forecast.values == [1.5])
    );
    let status = |i: usize| match &answer.results[i].result {
        RecordResult::Failed { status, .. } => *status,
        other => panic!("record {i}: {other:?}"),
    };
    assert_eq!(status(2), 403);
    assert_eq!(status(3), 400);
    assert_eq!(answer.results[3].model_version.as_deref(), Some("2"));
    assert_eq!(status(4), 404);
    assert_eq!(status(5), 502);
}
