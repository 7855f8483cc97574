//! `mmctl import`: into a store directory (every model checked as a scorer would check it
//! before it is written; a rerun skips what is already there by content hash, also after the
//! import was killed half-way), through the proxy's admin API (live at once), and into Azure
//! Blob (Azurite, skipping by the stored digest).

use std::process::Stdio;
use std::time::{Duration, Instant};

use manymodels_models::GeneratedModel;
use manymodels_tests::azurite::{self, Azurite};
use manymodels_tests::process::{Pool, binary};
use manymodels_tests::reference::{TOLERANCE, close};
use manymodels_tests::{ScorerProcess, TempDir, write_model};

use super::{KEY, ROW, forest, infer, isolated, linear, mmctl, outcomes, record, stored, write};

#[tokio::test]
async fn import_into_a_store_checks_every_model_and_resumes_by_content() {
    let src = TempDir::new("import-src");
    let store = TempDir::new("import-store");
    let s = src.path();
    write(&s.join("lin-a.onnx"), &linear(8, 1).bytes);
    write(&s.join("forest-b.onnx"), &forest(2).bytes);
    write(&s.join("multi/1/model.onnx"), &linear(8, 3).bytes);
    write(&s.join("multi/2/model.onnx"), &linear(8, 4).bytes);
    write(&s.join("broken.onnx"), b"this is not an ONNX model");
    write(&s.join("bad id.onnx"), &linear(8, 5).bytes);
    // A new version whose inputs differ from the live one: a scorer would refuse it.
    write_model(store.path(), "lin-c", 1, &linear(8, 6).bytes).unwrap();
    write(&s.join("lin-c.onnx"), &linear(12, 7).bytes);
    write(&s.join("README.txt"), b"not a model");
    let to = format!("dir:{}", store.path().display());
    let import = |extra: &'static [&'static str]| {
        let to = to.clone();
        let src = s.to_path_buf();
        async move {
            let mut args = vec!["--store", &to, "--json", "import"];
            let src = src.display().to_string();
            args.push(&src);
            args.extend_from_slice(&["--to", "store"]);
            args.extend_from_slice(extra);
            mmctl(&args, &[]).await
        }
    };

    // A dry run checks everything and writes nothing.
    let dry = import(&["--dry-run"]).await;
    assert_eq!(dry.code, 1, "refusals make the exit code 1: {}", dry.stderr);
    let report = dry.json();
    let mut expected = vec![
        ("bad id".to_string(), None, "refused".to_string()),
        ("broken".to_string(), Some(1), "refused".to_string()),
        ("forest-b".to_string(), Some(1), "would_publish".to_string()),
        ("lin-a".to_string(), Some(1), "would_publish".to_string()),
        ("lin-c".to_string(), Some(2), "refused".to_string()),
        ("multi".to_string(), Some(1), "would_publish".to_string()),
        ("multi".to_string(), Some(2), "would_publish".to_string()),
    ];
    assert_eq!(outcomes(&report), expected);
    assert!(
        stored(store.path(), "lin-a", 1).is_none(),
        "a dry run writes nothing"
    );
    let broken = record(&report, "broken")["detail"].as_str().unwrap();
    assert!(broken.contains("model"), "the loader's reason: {broken}");
    let lin_c = record(&report, "lin-c")["detail"].as_str().unwrap();
    assert!(lin_c.contains("differ"), "the signature check: {lin_c}");
    assert!(
        record(&report, "bad id")["detail"]
            .as_str()
            .unwrap()
            .contains("not a valid model id")
    );
    // The check is the scorer's: the engine it would serve with, and its memory.
    assert_eq!(record(&report, "forest-b")["engine"], "native");
    assert!(
        record(&report, "forest-b")["weight_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(
        report["summary"]["ignored_files"].as_array().unwrap().len(),
        1
    );

    // The import writes the checked models, byte for byte, and only those.
    let first = import(&[]).await;
    assert_eq!(first.code, 1);
    for e in expected.iter_mut() {
        if e.2 == "would_publish" {
            e.2 = "published".into();
        }
    }
    assert_eq!(outcomes(&first.json()), expected);
    assert_eq!(
        stored(store.path(), "lin-a", 1).unwrap(),
        linear(8, 1).bytes
    );
    assert_eq!(
        stored(store.path(), "forest-b", 1).unwrap(),
        forest(2).bytes
    );
    assert_eq!(
        stored(store.path(), "multi", 2).unwrap(),
        linear(8, 4).bytes
    );
    assert!(stored(store.path(), "broken", 1).is_none());
    assert!(stored(store.path(), "lin-c", 2).is_none());

    // Without the bad files, a rerun skips everything (identical content) and succeeds.
    for bad in ["broken.onnx", "bad id.onnx", "lin-c.onnx", "README.txt"] {
        std::fs::remove_file(s.join(bad)).unwrap();
    }
    let again = import(&[]).await;
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    let report = again.json();
    assert_eq!(report["summary"]["skipped"], 4);
    assert_eq!(report["summary"]["published"], 0);

    // A changed file is the next version; going back to an earlier file is a skip.
    write(&s.join("lin-a.onnx"), &linear(8, 9).bytes);
    let changed = import(&[]).await;
    assert_eq!(changed.code, 0);
    assert_eq!(record(&changed.json(), "lin-a")["version"], 2);
    assert_eq!(
        stored(store.path(), "lin-a", 2).unwrap(),
        linear(8, 9).bytes
    );
    write(&s.join("lin-a.onnx"), &linear(8, 1).bytes);
    let back = import(&[]).await;
    let lin_a = record(&back.json(), "lin-a").clone();
    assert_eq!(
        (lin_a["outcome"].as_str(), lin_a["version"].as_u64()),
        (Some("skipped"), Some(1))
    );
    assert!(stored(store.path(), "lin-a", 3).is_none());

    // A store-layout version that exists with other content is refused, never overwritten.
    write(&s.join("multi/2/model.onnx"), &linear(8, 10).bytes);
    let clash = import(&[]).await;
    assert_eq!(clash.code, 1);
    let multi: Vec<_> = outcomes(&clash.json())
        .into_iter()
        .filter(|o| o.0 == "multi")
        .collect();
    assert_eq!(
        multi[1],
        ("multi".to_string(), Some(2), "refused".to_string())
    );
    assert_eq!(
        stored(store.path(), "multi", 2).unwrap(),
        linear(8, 4).bytes
    );

    // People get a table with every refusal and its reason.
    let table = mmctl(
        &[
            "--store",
            &to,
            "import",
            &s.display().to_string(),
            "--to",
            "store",
        ],
        &[],
    )
    .await;
    assert_eq!(table.code, 1);
    assert!(table.stdout.contains("refused"), "{}", table.stdout);
    assert!(table.stdout.contains("other content"), "{}", table.stdout);
}

#[tokio::test]
async fn import_through_the_admin_api_goes_live_and_resumes_after_a_kill() {
    let store = TempDir::new("api-store");
    let pool = Pool::local(
        store.path(),
        2,
        &[&format!("auth.admin_keys={KEY}")],
        &[&format!("auth.admin_keys={KEY}")],
    );
    let src = TempDir::new("api-src");
    let models: Vec<(String, GeneratedModel)> = (0..60)
        .map(|i| (format!("shop-{i:03}"), linear(8, 1000 + i)))
        .collect();
    for (id, model) in &models {
        write(&src.path().join(format!("{id}.onnx")), &model.bytes);
    }
    let args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "--proxy",
            &pool.proxy.url,
            "--key",
            KEY,
            "--json",
            "import",
            &src.path().display().to_string(),
            "--jobs",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };

    // Killed half-way: whatever it wrote stays, complete; the rerun publishes the rest.
    let home = TempDir::new("mmctl-home");
    let mut command = tokio::process::Command::new(binary("mmctl"));
    isolated(&mut command, home.path());
    let mut child = command
        .args(args(&[]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let count = || {
        std::fs::read_dir(store.path())
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let started = Instant::now();
    while count() < 10 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().await.unwrap();
    let written_before = count();
    assert!(
        (10..60).contains(&written_before),
        "killed half-way, after {written_before} models"
    );
    let owned: Vec<String> = args(&[]);
    let owned: Vec<&str> = owned.iter().map(String::as_str).collect();
    let resumed = mmctl(&owned, &[]).await;
    assert_eq!(resumed.code, 0, "{}\n{}", resumed.stdout, resumed.stderr);
    let report = resumed.json();
    let skipped = report["summary"]["skipped"].as_u64().unwrap();
    let published = report["summary"]["published"].as_u64().unwrap();
    assert_eq!(skipped + published, 60);
    assert!(
        skipped as usize >= written_before - 1,
        "skipped {skipped}, {written_before} were written before the kill"
    );
    // Every model is there once, as version 1, and scores as its generator says.
    let client = reqwest::Client::new();
    for (id, model) in &models {
        assert!(stored(store.path(), id, 2).is_none(), "{id} written twice");
        let (_, _, answer) = infer(&client, &pool.proxy.url, id).await;
        let got = answer["outputs"][0]["data"][0].as_f64().unwrap();
        let want = model.predict(&ROW) as f64;
        assert!(close(got, want, TOLERANCE), "{id}: {got} vs {want}");
        assert_eq!(answer["model_version"], "1");
    }

    // A new file for a served model goes live through the API at once.
    write(&src.path().join("shop-000.onnx"), &linear(8, 77).bytes);
    let owned = args(&["--prefix", "shop-00"]);
    let owned: Vec<&str> = owned.iter().map(String::as_str).collect();
    let next = mmctl(&owned, &[]).await;
    assert_eq!(next.code, 0, "{}", next.stderr);
    let report = next.json();
    assert_eq!(
        report["summary"]["files"], 10,
        "--prefix keeps shop-000..009"
    );
    assert_eq!(record(&report, "shop-000")["version"], 2);
    assert_eq!(record(&report, "shop-000")["outcome"], "published");
    let (_, _, answer) = infer(&client, &pool.proxy.url, "shop-000").await;
    assert_eq!(answer["model_version"], "2");

    // A bad file: refused by the local check, or without it by the pool itself (422).
    write(&src.path().join("zz-broken.onnx"), b"\x08\x07garbage");
    let owned = args(&["--prefix", "zz-", "--no-check"]);
    let owned: Vec<&str> = owned.iter().map(String::as_str).collect();
    let refused = mmctl(&owned, &[]).await;
    assert_eq!(refused.code, 1);
    let detail = record(&refused.json(), "zz-broken")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.contains("the pool refused it") && detail.contains("422"),
        "{detail}"
    );
    // Without the admin key the pool refuses every write; the report says so.
    let refused = mmctl(
        &[
            "--proxy",
            &pool.proxy.url,
            "--json",
            "import",
            &src.path().join("shop-001.onnx").display().to_string(),
        ],
        &[],
    )
    .await;
    assert_eq!(refused.code, 1);
    let detail = record(&refused.json(), "shop-001")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.contains("401"), "{detail}");
}

#[tokio::test]
async fn import_into_azure_blob_skips_by_stored_digest_and_serves() {
    let azurite = Azurite::start().await;
    azurite.create_container("models").await;
    let src = TempDir::new("azure-src");
    for i in 0..6 {
        write(
            &src.path().join(format!("tenant-{i}.onnx")),
            &linear(8, 2000 + i).bytes,
        );
    }
    let env = [("AZURITE_BLOB_STORAGE_URL", azurite.url.as_str())];
    let src_arg = src.path().display().to_string();
    let args = [
        "--store",
        "azure://models/prod",
        "--azure-account",
        azurite::ACCOUNT,
        "--azure-access-key",
        azurite::KEY,
        "--azure-emulator",
        "--json",
        "import",
        &src_arg,
        "--to",
        "store",
    ];
    let import = || mmctl(&args, &env);
    let first = import().await;
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(first.json()["summary"]["published"], 6);
    let again = import().await;
    assert_eq!(again.code, 0);
    assert_eq!(again.json()["summary"]["skipped"], 6);
    // A scorer on the same container serves them.
    let scorer = ScorerProcess::start(
        &[
            "store.kind=azure".to_string(),
            "store.azure.use_emulator=true".into(),
            "store.azure.container=models".into(),
            "store.azure.prefix=prod".into(),
        ],
        &env,
    );
    let (_, _, answer) = infer(&reqwest::Client::new(), &scorer.url, "tenant-3").await;
    let want = linear(8, 2003).predict(&ROW) as f64;
    let got = answer["outputs"][0]["data"][0].as_f64().unwrap();
    assert!(close(got, want, TOLERANCE), "{got} vs {want}");
}
