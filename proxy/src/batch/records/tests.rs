use super::*;

fn reading<'a>(template: Option<&'a IdTemplate>, scope: &'a [String]) -> Reading<'a> {
    Reading {
        template,
        scope,
        max_records: 100,
    }
}

fn read_json(body: &str, reading: &Reading<'_>) -> Vec<Parsed> {
    read(body.as_bytes(), reading).unwrap()
}

fn target(p: &Parsed) -> &Target {
    p.target.as_ref().unwrap()
}

fn refused(p: &Parsed) -> &Refused {
    p.target.as_ref().unwrap_err()
}

#[test]
fn records_name_their_model_directly_or_through_the_template() {
    let template = IdTemplate::parse("{store}_{brand}_{model_type}").unwrap();
    let parsed = read_json(
        r#"{"records": [
            {"model": "m-1", "features": [1, 2.5]},
            {"store": "Store1000", "brand": "dominicks", "model_type": "lr", "price": 2.5, "promo": 1},
            {"model": "m-1", "version": 3, "features": [0, 0]},
            {"store": 7, "brand": "b", "model_type": "gbr", "features": [1], "columns": ["x"]}
        ]}"#,
        &reading(Some(&template), &[]),
    );
    assert_eq!(target(&parsed[0]), &("m-1".to_string(), None));
    assert_eq!(parsed[0].record.features, [1.0, 2.5]);
    assert_eq!(parsed[0].record.columns, None);
    assert_eq!(
        target(&parsed[1]),
        &("Store1000_dominicks_lr".to_string(), None)
    );
    // Named features keep the order they were sent in (not sorted: "promo" < "price" is
    // false only alphabetically).
    assert_eq!(parsed[1].record.features, [2.5, 1.0]);
    assert_eq!(
        parsed[1].record.columns.as_deref(),
        Some(&["price".to_string(), "promo".to_string()][..])
    );
    assert_eq!(target(&parsed[2]), &("m-1".to_string(), Some(3)));
    // A numeric key field is its text.
    assert_eq!(target(&parsed[3]), &("7_b_gbr".to_string(), None));
    assert_eq!(
        parsed[3].record.columns.as_deref(),
        Some(&["x".to_string()][..])
    );
    // Groups: one per (model, version), in first appearance, with positions.
    let groups = group(&parsed);
    let keys: Vec<_> = groups
        .iter()
        .map(|(t, p)| (t.0.as_str(), t.1, p.clone()))
        .collect();
    assert_eq!(
        keys,
        [
            ("m-1", None, vec![0]),
            ("Store1000_dominicks_lr", None, vec![1]),
            ("m-1", Some(3), vec![2]),
            ("7_b_gbr", None, vec![3]),
        ]
    );
}

#[test]
fn a_bad_record_fails_alone_with_its_reason() {
    let template = IdTemplate::parse("{store}_{brand}").unwrap();
    let scope = ["acme-".to_string()];
    let parsed = read_json(
        r#"{"records": [
            {"store": "acme-1", "brand": "b", "features": [1]},
            {"store": "acme-1", "features": [1]},
            {"store": "../x", "brand": "b", "features": [1]},
            {"store": "globex", "brand": "b", "features": [1]},
            {"store": "acme-1", "brand": "b", "colour": "red"},
            {"store": "acme-1", "brand": "b", "features": [1], "price": 2},
            {"store": "acme-1", "brand": "b", "features": [1, 2], "columns": ["x"]},
            {"store": "acme-1", "brand": "b"},
            {"store": "acme-1", "brand": "b", "version": "01", "features": [1]},
            {"store": "acme-1", "brand": "b", "forecast_horizon": 3},
            {"store": "acme-1", "brand": "b", "forecast_horizon": 0, "data": {"dates": [], "values": []}},
            {"store": "acme-1", "brand": "b", "forecast_horizon": 2, "data": {"dates": ["2026-01-01"], "values": [1, 2]}},
            {"store": "acme-1", "brand": "b", "data": {"dates": ["2026-01-01"], "values": [1]}}
        ]}"#,
        &reading(Some(&template), &scope),
    );
    assert_eq!(target(&parsed[0]).0, "acme-1_b");
    let says = |i: usize, status: u16, text: &str| {
        let r = refused(&parsed[i]);
        assert_eq!(r.status, status, "record {i}: {r:?}");
        assert!(r.error.contains(text), "record {i}: {}", r.error);
    };
    says(1, 400, "no 'brand'");
    says(2, 400, "invalid model id");
    says(3, 403, "may not use model 'globex_b'");
    says(4, 400, "'colour' is not a number");
    says(5, 400, "not both");
    says(6, 400, "differ in length");
    says(7, 400, "no features");
    says(8, 400, "invalid model version '01'");
    says(9, 400, "needs its history");
    says(10, 400, "positive integer");
    says(11, 400, "1 dates and 2 values");
    says(12, 400, "send 'forecast_horizon' too");
    // A refused record that named a readable id keeps it for the answer.
    assert_eq!(refused(&parsed[3]).model.as_deref(), Some("globex_b"));
    assert_eq!(refused(&parsed[1]).model, None);
    // Only the good record is grouped.
    assert_eq!(group(&parsed).len(), 1);
}

#[test]
fn without_a_template_records_must_name_the_model() {
    let parsed = read_json(
        r#"{"records": [{"store": "S1", "x": 1}]}"#,
        &reading(None, &[]),
    );
    let r = refused(&parsed[0]);
    assert!(r.error.contains("'store' is not a number"), "{}", r.error);
    let parsed = read_json(r#"{"records": [{"x": 1}]}"#, &reading(None, &[]));
    assert!(refused(&parsed[0]).error.contains("names no model"));
}

#[test]
fn forecasts_carry_their_history_and_frequency() {
    let template = IdTemplate::parse("{store}_{brand}_{model_type}").unwrap();
    let parsed = read_json(
        r#"{"records": [{"store": "Store1000", "brand": "dominicks", "model_type": "lr",
            "forecast_horizon": 5, "date_freq": "W-THU",
            "data": {"dates": ["2026-01-01", "2026-01-08"], "values": [10.5, 11]}}]}"#,
        &reading(Some(&template), &[]),
    );
    let ask = parsed[0].record.forecast.as_ref().unwrap();
    assert_eq!(ask.horizon, 5);
    assert_eq!(ask.frequency.as_deref(), Some("W-THU"));
    assert_eq!(ask.dates, ["2026-01-01", "2026-01-08"]);
    assert_eq!(ask.values, [10.5, 11.0]);
    assert!(parsed[0].record.features.is_empty());
}

#[test]
fn azure_ml_shapes_are_records_too() {
    let template = IdTemplate::parse("{store}_{brand}").unwrap();
    let r = reading(Some(&template), &[]);
    // Split orientation: the columns name each row's fields.
    let parsed = read_json(
        r#"{"input_data": {"columns": ["store", "brand", "price", "promo"], "index": [0, 1],
            "data": [["S1", "b", 2.5, 0], ["S2", "b", 3, 1]]}}"#,
        &r,
    );
    assert_eq!(target(&parsed[1]).0, "S2_b");
    assert_eq!(parsed[1].record.features, [3.0, 1.0]);
    assert_eq!(
        parsed[1].record.columns.as_deref(),
        Some(&["price".to_string(), "promo".to_string()][..])
    );
    // Records orientation, under input_data or data.
    for body in [
        r#"{"input_data": [{"store": "S1", "brand": "b", "x": 1}]}"#,
        r#"{"data": [{"store": "S1", "brand": "b", "x": 1}], "params": {"a": 1}}"#,
    ] {
        assert_eq!(target(&read_json(body, &r)[0]).0, "S1_b", "{body}");
    }
    let err = |body: &str| read(body.as_bytes(), &r).unwrap_err();
    assert!(matches!(
        err(r#"{"input_data": {"columns": ["a"], "data": [[1, 2]]}}"#),
        BodyError::Invalid(m) if m.contains("row 0 has 2 values for 1 columns")
    ));
    assert!(
        matches!(err(r#"{"records": [], "data": []}"#), BodyError::Invalid(m) if m.contains("one of"))
    );
    assert!(matches!(err(r#"{"records": []}"#), BodyError::Invalid(m) if m.contains("no records")));
    assert!(matches!(err(r#"{"rows": []}"#), BodyError::Invalid(_)));
    assert!(matches!(err(r#"[1, 2]"#), BodyError::Invalid(_)));
    assert!(matches!(err(r#"{"records": [1]}"#), BodyError::Invalid(m) if m.contains("a record")));
}

#[test]
fn too_many_records_is_its_own_refusal() {
    let body = format!(
        r#"{{"records": [{}]}}"#,
        vec![r#"{"model": "m", "features": [1]}"#; 101].join(",")
    );
    assert_eq!(
        read(body.as_bytes(), &reading(None, &[])).unwrap_err(),
        BodyError::TooMany {
            records: 101,
            limit: 100
        }
    );
}

#[test]
fn features_that_are_not_all_numbers_fail_their_record_only() {
    let parsed = read_json(
        r#"{"records": [
            {"model": "m", "features": [1, "x", 3]},
            {"model": "m", "features": [[1, 2], {"a": 1}]},
            {"model": "m", "features": "1,2"},
            {"model": "m", "features": {"a": [1]}},
            {"model": "m", "features": [1e3, -2, 0.5]}
        ]}"#,
        &reading(None, &[]),
    );
    for p in &parsed[..4] {
        let r = refused(p);
        assert_eq!(r.status, 400);
        assert!(r.error.contains("list of numbers"), "{}", r.error);
    }
    assert_eq!(parsed[4].record.features, [1000.0, -2.0, 0.5]);
}
