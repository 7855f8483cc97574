//! Reading `--batch` files: CSV and JSON lines.

use serde_json::json;

use super::*;

fn values(records: &Records) -> Vec<Value> {
    records
        .texts
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect()
}

#[test]
fn csv_rows_become_records_with_numbers_as_numbers_in_header_order() {
    let text = "model,store,price,qty,note\n\
                shop-1, 0042 ,1.5,3,plain\n\
                \n\
                shop-2,7,\"2,5\",-1e3,\"say \"\"hi\"\"\"\n";
    let records = read_csv(text).unwrap();
    assert_eq!(
        records.lines,
        [2, 4],
        "each record's line; the empty line skipped"
    );
    // Fields keep the header's order: the proxy reads named features in the order sent.
    assert_eq!(
        records.texts[0],
        r#"{"model":"shop-1","store":"0042","price":1.5,"qty":3,"note":"plain"}"#
    );
    assert_eq!(
        values(&records)[1],
        json!({"model": "shop-2", "store": 7, "price": "2,5", "qty": -1e3, "note": "say \"hi\""})
    );
}

#[test]
fn csv_numbers_are_sent_as_numbers_unless_they_read_as_text() {
    for (field, sent) in [
        ("3", "3"),
        ("-0.25", "-0.25"),
        ("1.50", "1.50"),
        ("6.02e23", "6.02e23"),
        ("+1", "1.0"),
        (".5", "0.5"),
        ("0", "0"),
        ("0.5", "0.5"),
        ("0042", "\"0042\""),
        ("nan", "\"nan\""),
        ("inf", "\"inf\""),
        ("", "\"\""),
        ("red", "\"red\""),
    ] {
        assert_eq!(csv_value(field), sent, "{field}");
    }
}

#[test]
fn csv_model_and_version_go_as_text_and_empty_ones_are_left_out() {
    let records = read_csv("model,version,x\n007,2,1\nm,,2\n").unwrap();
    assert_eq!(
        values(&records),
        [
            json!({"model": "007", "version": "2", "x": 1}),
            json!({"model": "m", "x": 2})
        ]
    );
}

#[test]
fn csv_quoted_fields_may_span_lines_and_crlf_ends_lines() {
    let records = read_csv("a,b\r\n\"two\nlines\",1\r\nx,\"\"\r\n").unwrap();
    assert_eq!(
        values(&records),
        [
            json!({"a": "two\nlines", "b": 1}),
            json!({"a": "x", "b": ""})
        ]
    );
    assert_eq!(records.lines, [2, 4], "a record's line is where it starts");
}

#[test]
fn bad_csv_names_the_line() {
    for (text, says) in [
        ("a,b\n1,2\n3\n", "line 3: 1 fields, the header has 2"),
        (
            "a,b\n1,2\n\n\"open,2\n4,5\n",
            "line 4: a quoted field is never closed",
        ),
        ("a,b\n1,x\"y\n", "line 2: a quote inside an unquoted field"),
        ("a,b\n\"1\"x,2\n", "line 2: text after a quoted field"),
        ("a,,c\n1,2,3\n", "header column 2 has no name"),
        ("a,a\n1,2\n", "names 'a' twice"),
        ("", "no header row"),
    ] {
        let error = read_csv(text).unwrap_err().to_string();
        assert!(error.contains(says), "{text:?}: {error}");
    }
    assert!(read_csv("a,b\n").unwrap().texts.is_empty());
}

#[test]
fn json_lines_are_sent_as_written_once_checked_to_be_objects() {
    let text = "\u{feff}{\"model\": \"a\", \"features\": [1, 2]}\n\n   \n  {\"z\":1,\"a\":2}  \r\n";
    let records = read_jsonl(text).unwrap();
    assert_eq!(
        records.texts,
        [r#"{"model": "a", "features": [1, 2]}"#, r#"{"z":1,"a":2}"#]
    );
    assert_eq!(records.lines, [1, 4]);
    assert_eq!(
        &body(&records.texts)[..],
        br#"{"records":[{"model": "a", "features": [1, 2]},{"z":1,"a":2}]}"#
    );
    for (text, says) in [
        (
            "{\"a\":1}\n[1,2]\n",
            "line 2: a record is a JSON object, not an array",
        ),
        ("{\"a\":1}\n\n{\"a\":\n", "line 3: not a JSON object"),
        ("{\"a\":1} {\"b\":2}\n", "line 1: not a JSON object"),
        (
            "\"text\"\n",
            "line 1: a record is a JSON object, not a string",
        ),
    ] {
        let error = read_jsonl(text).unwrap_err().to_string();
        assert!(error.contains(says), "{text:?}: {error}");
    }
}

#[test]
fn the_format_comes_from_the_extension_else_the_first_line() {
    assert_eq!(sniff(Path::new("r.csv"), "{"), Format::Csv);
    assert_eq!(sniff(Path::new("r.JSONL"), "a,b"), Format::Jsonl);
    assert_eq!(sniff(Path::new("-"), "\n  {\"a\": 1}"), Format::Jsonl);
    assert_eq!(sniff(Path::new("records.txt"), "model,x\n"), Format::Csv);
}

#[test]
fn a_result_is_one_table_row() {
    let answer: BatchAnswer = serde_json::from_value(json!({
        "results": [
            {"model": "a", "model_version": "2", "outputs": {"label": [1], "probabilities": [0.25, 0.75]}},
            {"model": "f", "model_version": "1", "forecast": {"dates": ["2026-01-08"], "values": [0.5]}},
            {"error": "no model 'c'", "status": 404},
        ],
        "models": 3,
        "failed": 1,
    }))
    .unwrap();
    let rows: Vec<Vec<String>> = answer
        .results
        .iter()
        .enumerate()
        .map(|(i, r)| row(i + 2, r))
        .collect();
    assert_eq!(
        rows[0],
        ["2", "a", "2", "label=1 probabilities=[0.25,0.75]"]
    );
    assert_eq!(rows[1][3], "forecast 2026-01-08: 0.5");
    assert_eq!(rows[2], ["4", "-", "-", "failed 404: no model 'c'"]);
}
