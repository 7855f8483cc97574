//! The proxy's `/status` page in a real headless browser (Debian's `chromium`): the DOM
//! after its script ran, and a screenshot in which the chart and the tables are drawn
//! (the shadows table included: linear-small shadows a second version of itself).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use manymodels_tests::process::{Pool, addrs};
use manymodels_tests::{TempDir, demo_reference, infer_body, write_model};

fn chromium(profile: &Path, args: &[&str]) -> String {
    let binary = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new("sh")
                .args(["-c", &format!("command -v {b}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("chromium is not installed (`cargo xtask test` installs it with apt-get)");
    let mut child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-extensions",
            "--hide-scrollbars",
            "--window-size=1280,1100",
            // Let the page's script fetch the pool view and draw before the capture.
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromium");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "chromium did not finish in 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Rows (y) of the screenshot that hold pixels within `tolerance` of `rgb`, and how many
/// such pixels there are.
fn pixels(png: &Path, rgb: [u8; 3], tolerance: i32) -> (usize, Vec<u32>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buffer).unwrap();
    let channels = info.color_type.samples();
    let mut count = 0;
    let mut rows = Vec::new();
    for y in 0..info.height {
        let mut in_row = false;
        for x in 0..info.width {
            let at = (y as usize * info.line_size) + x as usize * channels;
            let px = &buffer[at..at + 3];
            if (0..3).all(|c| (i32::from(px[c]) - i32::from(rgb[c])).abs() <= tolerance) {
                count += 1;
                in_row = true;
            }
        }
        if in_row {
            rows.push(y);
        }
    }
    (count, rows)
}

#[tokio::test]
async fn the_status_page_draws_the_pool_chart_and_tables_in_a_real_browser() {
    // A copy of the demo store where linear-small has a version 2 (the same file), pinned
    // to 1: version 2 is its shadow.
    let store = TempDir::copy_of_demo("status");
    let small = store.path().join("linear-small");
    write_model(
        store.path(),
        "linear-small",
        2,
        &std::fs::read(small.join("1/model.onnx")).unwrap(),
    )
    .unwrap();
    std::fs::write(small.join("alias.json"), r#"{"pinned": 1}"#).unwrap();
    let Pool { scorers, proxy } = Pool::local(store.path(), 3, &[], &["stats.push_interval=1s"]);
    let client = reqwest::Client::new();
    let (status, answer) = manymodels_tests::http::call(
        &client,
        "PUT",
        &format!("{}/v2/admin/models/linear-small/shadow", proxy.url),
        None,
        Some(&serde_json::json!({"version": 2, "percent": 100,
            "rule": {"min_requests": 1000, "min_agreement": 0.99, "action": "report"}})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let references = demo_reference();
    for _ in 0..5 {
        for reference in &references {
            let id = reference["id"].as_str().unwrap();
            let response = client
                .post(format!("{}/v2/models/{id}/infer", proxy.url))
                .json(&infer_body(reference))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
    }
    // One request linear-small cannot take: its error share shows in the ledger's table.
    let response = client
        .post(format!("{}/v2/models/linear-small/infer", proxy.url))
        .json(&serde_json::json!({"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Two pushes, so every scorer's cache summary is in the pool view.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let url = format!("{}/status", proxy.url);
    let profile = TempDir::new("chromium");
    let (dom, shot) = tokio::task::spawn_blocking({
        let url = url.clone();
        let profile = profile.path().to_path_buf();
        move || {
            let dom = chromium(&profile, &["--dump-dom", &url]);
            let shot = profile.join("status.png");
            chromium(
                &profile,
                &[&format!("--screenshot={}", shot.display()), &url],
            );
            (dom, shot)
        }
    })
    .await
    .unwrap();

    // The script ran: tables filled from /v2/mm/pool, the chart drawn.
    let scorers_table = &dom[dom.find("id=\"scorers\"").expect("scorer table")..];
    let scorers_table = &scorers_table[..scorers_table.find("</table>").unwrap()];
    for addr in addrs(&scorers) {
        assert!(
            scorers_table.contains(addr),
            "scorer {addr} missing: {scorers_table}"
        );
    }
    assert_eq!(
        scorers_table.matches(">ready<").count(),
        3,
        "{scorers_table}"
    );
    let hottest = &dom[dom.find("id=\"hottest\"").expect("hottest table")..];
    assert!(hottest.contains("linear-small"), "hottest models missing");
    assert!(dom.contains("class=\"loads\""), "no load bars in the chart");
    assert!(
        dom.contains("class=\"hits\"") || dom.contains("<circle"),
        "no hit-ratio line"
    );
    assert!(!dom.contains("id=\"hit-ratio\">–<"), "hit ratio not filled");
    // The per-model ledger: a row per demo model with its requests and a latency bar;
    // linear-small's failed request makes its error share red.
    let ledger = &dom[dom.find("id=\"ledger\"").expect("ledger table")..];
    let ledger = &ledger[..ledger.find("</table>").unwrap()];
    for reference in &references {
        let id = reference["id"].as_str().unwrap();
        assert!(
            ledger.contains(&format!("<td>{id}</td>")),
            "{id} missing: {ledger}"
        );
    }
    assert_eq!(
        ledger.matches("class=\"lat\"").count(),
        references.len(),
        "one latency bar per model: {ledger}"
    );
    assert!(
        ledger.contains("<i style="),
        "no p50-p99 range drawn: {ledger}"
    );
    assert!(
        ledger.contains("invalid 1"),
        "linear-small's error kind: {ledger}"
    );
    assert_eq!(ledger.matches("num hot").count(), 1, "{ledger}");
    // The shadows table (/v2/admin/shadows): linear-small's shadow, still collecting.
    let shadows = &dom[dom.find("id=\"shadows\"").expect("shadows table")..];
    let shadows = &shadows[..shadows.find("</table>").unwrap()];
    assert!(shadows.contains("<td>linear-small</td>"), "{shadows}");
    assert!(
        shadows.contains(">v1<") && shadows.contains(">v2<") && shadows.contains(">100%<"),
        "live, candidate and share: {shadows}"
    );
    assert!(shadows.contains(">collecting<"), "{shadows}");
    assert_eq!(
        shadows.matches("<tr>").count(),
        2,
        "a header and one shadow: {shadows}"
    );

    // The screenshot: orange load bars in the chart, above the table's green "ready"s.
    assert!(shot.exists(), "chromium wrote no screenshot");
    let (orange, orange_rows) = pixels(&shot, [0xe4, 0x57, 0x2e], 40);
    let (blue, _) = pixels(&shot, [0x2e, 0x86, 0xde], 30);
    let (green, green_rows) = pixels(&shot, [0x2a, 0x9d, 0x5c], 40);
    assert!(orange > 300, "chart bars not drawn ({orange} px)");
    assert!(blue > 50, "hit ratio / resident bars not drawn ({blue} px)");
    assert!(green > 20, "scorer table not drawn ({green} px)");
    let chart_bottom = orange_rows.iter().max().unwrap();
    let table_top = green_rows.iter().min().unwrap();
    assert!(
        chart_bottom < table_top,
        "chart ({chart_bottom}) should sit above the table ({table_top})"
    );
}
