//! Both stores through the same checks: the alias, the canary and the shadow are written
//! atomically,
//! read back in the one model look-up, changed, and removed; a version's digest is its
//! size and the SHA-256 of its bytes, however it was written.

use std::path::PathBuf;

use manymodels_config::Secret;
use manymodels_config::scorer::{AzureCredential, AzureStoreConfig};
use manymodels_tests::azurite::{self, Azurite};

use super::*;

fn id() -> ModelId {
    ModelId::parse("m").unwrap()
}

fn canary(version: u64, percent: f64) -> Canary {
    Canary::new(version, percent).unwrap()
}

fn shadow(version: u64, percent: f64) -> ShadowSpec {
    ShadowSpec {
        version,
        percent,
        tolerance: 1e-6,
        rule: None,
        since_ms: 1_765_000_000_000,
    }
}

/// What every store must do with `shadow.json`: written atomically, read in the one
/// look-up, changed, refused when it breaks the rules, removed.
async fn shadow_round_trip(store: &dyn ModelStore) {
    let m = ModelId::parse("s").unwrap();
    for version in [1, 2] {
        store
            .write_version(&m, version, Bytes::from_static(b"v"))
            .await
            .unwrap();
    }
    // Dropping what is not there succeeds.
    store.write_shadow(&m, None).await.unwrap();
    assert_eq!(store.model_state(&m).await.unwrap().shadow, None);

    store.write_shadow(&m, Some(shadow(1, 20.0))).await.unwrap();
    let state = store.model_state(&m).await.unwrap();
    assert_eq!(state.shadow, Some(shadow(1, 20.0)));
    assert_eq!(state.candidate(), Some(&shadow(1, 20.0)));
    // A changed shadow is read again (on Azure: a new ETag).
    let mut changed = shadow(1, 50.0);
    changed.rule = Some(manymodels_contract::shadow::ShadowRule {
        min_requests: 10,
        min_agreement: 0.99,
        max_errors: 0,
        action: manymodels_contract::shadow::RuleAction::Report,
    });
    store.write_shadow(&m, Some(changed.clone())).await.unwrap();
    let state = store.model_state(&m).await.unwrap();
    assert_eq!(state.shadow, Some(changed.clone()));
    // Unchanged, it is the same (on Azure: from memory).
    assert_eq!(store.model_state(&m).await.unwrap(), state);
    // A shadow of the live version, or of a version the store does not have, compares
    // nothing.
    store.write_alias(&m, Some(1)).await.unwrap();
    assert_eq!(store.model_state(&m).await.unwrap().candidate(), None);
    store.write_alias(&m, None).await.unwrap();
    store.write_shadow(&m, Some(shadow(9, 20.0))).await.unwrap();
    assert_eq!(store.model_state(&m).await.unwrap().candidate(), None);
    // One that breaks the rules is refused, and the file stays as it was.
    let error = store
        .write_shadow(&m, Some(shadow(1, 0.0)))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Conflict(_)), "{error}");
    assert_eq!(
        store.model_state(&m).await.unwrap().shadow,
        Some(shadow(9, 20.0))
    );

    store.write_shadow(&m, None).await.unwrap();
    let state = store.model_state(&m).await.unwrap();
    assert_eq!((state.shadow, state.versions), (None, vec![1, 2]));
}

/// What every store must do with the small files beside the versions.
async fn alias_and_canary_round_trip(store: &dyn ModelStore) {
    let m = id();
    store
        .write_version(&m, 1, Bytes::from_static(b"one"))
        .await
        .unwrap();
    store
        .write_version(&m, 2, Bytes::from_static(b"two"))
        .await
        .unwrap();
    let state = store.model_state(&m).await.unwrap();
    assert_eq!(
        state,
        ModelState {
            versions: vec![1, 2],
            pinned: None,
            canary: None,
            shadow: None,
        }
    );
    // Dropping what is not there succeeds.
    store.write_canary(&m, None).await.unwrap();

    store.write_canary(&m, Some(canary(2, 30.0))).await.unwrap();
    let state = store.model_state(&m).await.unwrap();
    assert_eq!(state.canary, Some(canary(2, 30.0)));
    assert_eq!(state.split(), Some(canary(2, 30.0)));
    assert_eq!(state.live(), Some(2));
    // A changed canary is read again (on Azure: a new ETag), and the alias beside it too.
    store.write_canary(&m, Some(canary(1, 12.5))).await.unwrap();
    store.write_alias(&m, Some(2)).await.unwrap();
    let state = store.model_state(&m).await.unwrap();
    assert_eq!(
        (state.pinned, state.canary, state.live()),
        (Some(2), Some(canary(1, 12.5)), Some(2))
    );
    // Unchanged, it is the same (on Azure: from memory).
    assert_eq!(store.model_state(&m).await.unwrap(), state);
    // A canary of a version the store does not have splits nothing.
    store.write_canary(&m, Some(canary(9, 50.0))).await.unwrap();
    let state = store.model_state(&m).await.unwrap();
    assert_eq!((state.canary, state.split()), (Some(canary(9, 50.0)), None));

    store.write_canary(&m, None).await.unwrap();
    store.write_alias(&m, None).await.unwrap();
    let state = store.model_state(&m).await.unwrap();
    assert_eq!((state.pinned, state.canary), (None, None));
    assert_eq!(state.versions, vec![1, 2]);
}

/// What every store must do with objects outside the models' folders (the capture rules,
/// captured payloads): absent reads as `None`, a put replaces, nested paths are made, a
/// path that could reach a model's folder or climb out is refused, and no object is
/// listed as a model.
async fn objects_round_trip(store: &dyn ModelStore) {
    let rules = "_manymodels/capture.json";
    assert_eq!(store.read_object(rules).await.unwrap(), None);
    store
        .put_object(rules, Bytes::from_static(b"{\"rules\":[]}"))
        .await
        .unwrap();
    store
        .put_object(rules, Bytes::from_static(b"{\"rules\":[1]}"))
        .await
        .unwrap();
    assert_eq!(
        store.read_object(rules).await.unwrap().as_deref(),
        Some(&b"{\"rules\":[1]}"[..])
    );
    let line = "_captures/m/2026/12/07/02/s1-1765072800000-0.jsonl";
    store
        .put_object(line, Bytes::from_static(b"{}\n"))
        .await
        .unwrap();
    assert_eq!(
        store.read_object(line).await.unwrap().as_deref(),
        Some(&b"{}\n"[..])
    );
    for bad in [
        "m/x.json",
        "_c/../m/1/model.onnx",
        "_c//x",
        "/_c/x",
        "_c/a b",
        "",
    ] {
        assert!(
            matches!(
                store.put_object(bad, Bytes::new()).await,
                Err(StoreError::Conflict(_))
            ),
            "{bad}"
        );
    }
    let listed = store.list_models().await.unwrap();
    assert!(
        listed.iter().all(|id| !id.as_str().starts_with('_')),
        "{listed:?}"
    );
}

/// What every store must answer for a version's digest: the size and SHA-256 of what
/// `write_version` was given, and `NotFound` for a version or a model it does not have.
async fn digests_are_of_the_written_bytes(store: &dyn ModelStore) {
    let m = ModelId::parse("hashed").unwrap();
    // Over one 64 KiB read, so a file is hashed in pieces.
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    store
        .write_version(&m, 1, Bytes::from(body.clone()))
        .await
        .unwrap();
    let digest = store.digest(&m, 1).await.unwrap();
    assert_eq!(
        digest,
        Digest {
            bytes: 200_000,
            sha256: sha256_hex(&body)
        }
    );
    assert!(matches!(
        store.digest(&m, 2).await,
        Err(StoreError::NotFound)
    ));
    let absent = ModelId::parse("absent").unwrap();
    assert!(matches!(
        store.digest(&absent, 1).await,
        Err(StoreError::NotFound)
    ));
}

#[test]
fn sha256_hex_is_lowercase_hex_of_the_standard_hash() {
    // FIPS 180-2's test vectors.
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        Digest::of(b"abc"),
        Digest {
            bytes: 3,
            sha256: sha256_hex(b"abc")
        }
    );
    assert!(is_sha256_hex(&sha256_hex(b"x")));
    assert!(!is_sha256_hex(&sha256_hex(b"x").to_uppercase()));
    assert!(!is_sha256_hex("abc"));
}

#[tokio::test]
async fn the_local_store_hashes_a_version_file() {
    let dir = Dir(std::env::temp_dir().join(format!("mm-store-digest-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let store = LocalStore::new(dir.0.clone());
    digests_are_of_the_written_bytes(&store).await;
    // A version written behind the store's back is hashed the same way.
    let version = dir.0.join("other").join("3");
    std::fs::create_dir_all(&version).unwrap();
    std::fs::write(version.join(MODEL_FILE), b"abc").unwrap();
    let other = ModelId::parse("other").unwrap();
    assert_eq!(store.digest(&other, 3).await.unwrap(), Digest::of(b"abc"));
    // A version folder without its model file is no version.
    std::fs::create_dir_all(dir.0.join("other").join("4")).unwrap();
    assert!(matches!(
        store.digest(&other, 4).await,
        Err(StoreError::NotFound)
    ));
}

/// Two uploads of one version racing in one process (a client retrying while its first
/// upload still writes): one wins, the other is a conflict, and the version is exactly one
/// of the two files, never a mix or a truncated one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writes_of_one_version_leave_one_whole_file() {
    let dir = Dir(std::env::temp_dir().join(format!("mm-store-race-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let store = Arc::new(LocalStore::new(dir.0.clone()));
    for round in 1..=20u64 {
        let bodies = [vec![b'a'; 4 << 20], vec![b'b'; 3 << 20]];
        let writes = bodies.clone().map(|body| {
            let store = store.clone();
            tokio::spawn(async move { store.write_version(&id(), round, Bytes::from(body)).await })
        });
        let [first, second] = writes;
        let outcomes = [first.await.unwrap(), second.await.unwrap()];
        let won = outcomes.iter().filter(|o| o.is_ok()).count();
        let conflicts = outcomes
            .iter()
            .filter(|o| matches!(o, Err(StoreError::Conflict(_))))
            .count();
        assert_eq!((won, conflicts), (1, 1), "round {round}: {outcomes:?}");
        let stored = store.read(&id(), round).await.unwrap();
        assert!(
            bodies.iter().any(|b| b[..] == stored[..]),
            "round {round}: a file of {} bytes that is neither upload",
            stored.len()
        );
    }
}

#[test]
fn a_canary_is_a_version_and_a_share() {
    assert!(Canary::new(0, 10.0).is_err());
    assert!(Canary::new(1, -0.1).is_err());
    assert!(Canary::new(1, 100.5).is_err());
    assert!(Canary::new(1, f64::NAN).is_err());
    assert_eq!(
        Canary::parse(br#"{"version": 3, "percent": 10}"#).unwrap(),
        canary(3, 10.0)
    );
    for bad in [
        &br#"{"version": 3, "percent": 101}"#[..],
        br#"{"version": 0, "percent": 1}"#,
        br#"{"version": 3}"#,
        br#"{"version": 3, "percent": 1, "extra": 1}"#,
        b"not json",
    ] {
        let error = Canary::parse(bad).unwrap_err();
        assert!(error.to_string().contains(CANARY_FILE), "{error}");
    }
}

#[test]
fn a_shadow_is_a_version_a_share_a_tolerance_and_a_fraction() {
    assert!(check_shadow(&shadow(1, 100.0)).is_ok());
    assert!(check_shadow(&shadow(1, 0.01)).is_ok());
    for bad in [
        shadow(0, 10.0),
        shadow(1, 0.0),
        shadow(1, 100.5),
        shadow(1, f64::NAN),
        ShadowSpec {
            tolerance: -1.0,
            ..shadow(1, 10.0)
        },
        ShadowSpec {
            tolerance: f64::INFINITY,
            ..shadow(1, 10.0)
        },
    ] {
        assert!(check_shadow(&bad).is_err(), "{bad:?}");
    }
    let mut rule = manymodels_contract::shadow::ShadowRule {
        min_requests: 1,
        min_agreement: 1.0,
        max_errors: 0,
        action: manymodels_contract::shadow::RuleAction::Promote,
    };
    let with = |rule| ShadowSpec {
        rule: Some(rule),
        ..shadow(1, 10.0)
    };
    assert!(check_shadow(&with(rule)).is_ok());
    rule.min_agreement = 99.5;
    assert!(check_shadow(&with(rule)).is_err());
    let parsed = parse_shadow(br#"{"version": 3, "percent": 20}"#).unwrap();
    assert_eq!((parsed.version, parsed.since_ms), (3, 0));
    for bad in [
        &br#"{"version": 3, "percent": 0}"#[..],
        br#"{"version": "3", "percent": 10}"#,
        br#"{"version": 3}"#,
        br#"{"version": 3, "percent": 10, "tolerance": -0.5}"#,
        b"not json",
    ] {
        let error = parse_shadow(bad).unwrap_err();
        assert!(error.to_string().contains(SHADOW_FILE), "{error}");
    }
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn the_local_store_writes_and_reads_the_alias_and_the_canary() {
    let dir = Dir(std::env::temp_dir().join(format!("mm-store-unit-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let store = LocalStore::new(dir.0.clone());
    alias_and_canary_round_trip(&store).await;
    shadow_round_trip(&store).await;
    // A shadow file that breaks the rules fails the look-up, naming the file.
    std::fs::write(
        dir.0.join("s").join(SHADOW_FILE),
        r#"{"version": 1, "percent": 20, "tolerance": -1}"#,
    )
    .unwrap();
    let error = store
        .model_state(&ModelId::parse("s").unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::InvalidFile { file: SHADOW_FILE, error } if error.contains("tolerance")),
        "{error}"
    );
    // Written by rename: no temporary is left beside the files.
    store
        .write_canary(&id(), Some(canary(1, 5.0)))
        .await
        .unwrap();
    let names: Vec<String> = std::fs::read_dir(dir.0.join("m"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    assert!(names.contains(&CANARY_FILE.to_string()));
    // A canary file that breaks the rules fails the look-up, naming the file.
    std::fs::write(
        dir.0.join("m").join(CANARY_FILE),
        r#"{"version": 1, "percent": 150}"#,
    )
    .unwrap();
    let error = store.model_state(&id()).await.unwrap_err();
    assert!(
        matches!(&error, StoreError::InvalidFile { file: CANARY_FILE, error } if error.contains("percent")),
        "{error}"
    );
}

#[tokio::test]
async fn the_local_store_reads_and_puts_objects_outside_the_models() {
    let dir = Dir(std::env::temp_dir().join(format!("mm-store-objects-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let store = LocalStore::new(dir.0.clone());
    objects_round_trip(&store).await;
    // Written by rename: no temporary is left beside the object.
    let names: Vec<String> = std::fs::read_dir(dir.0.join("_manymodels"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["capture.json".to_string()]);
}

/// A store on Azurite's `models` container (made here) under the prefix `prod/`.
async fn prod_store(azurite: &Azurite) -> AzureStore {
    azurite.create_container("models").await;
    AzureStore::new(&AzureStoreConfig {
        account: azurite::ACCOUNT.into(),
        container: "models".into(),
        prefix: "prod/".into(),
        // Azurite names the account in the path, as object_store's emulator mode does.
        endpoint: Some(format!("{}/{}", azurite.url, azurite::ACCOUNT)),
        use_emulator: false,
        credential: AzureCredential::AccessKey(Secret::new(azurite::KEY)),
    })
    .unwrap()
}

#[tokio::test]
async fn the_azure_store_writes_and_reads_the_alias_and_the_canary() {
    let azurite = Azurite::start().await;
    let store = prod_store(&azurite).await;
    alias_and_canary_round_trip(&store).await;
    shadow_round_trip(&store).await;
    digests_are_of_the_written_bytes(&store).await;
    // A canary blob put behind the store's back (a new ETag) is read again.
    azurite
        .put_blob(
            "models",
            "prod/m/canary.json",
            br#"{"version": 2, "percent": 40}"#.to_vec(),
        )
        .await;
    let state = store.model_state(&id()).await.unwrap();
    assert_eq!(state.canary, Some(canary(2, 40.0)));
    // And a shadow blob likewise.
    azurite
        .put_blob(
            "models",
            "prod/m/shadow.json",
            br#"{"version": 1, "percent": 5, "since_ms": 7}"#.to_vec(),
        )
        .await;
    let state = store.model_state(&id()).await.unwrap();
    assert_eq!(
        state.shadow.map(|s| (s.version, s.percent, s.since_ms)),
        Some((1, 5.0, 7))
    );
    // Objects are blobs under the store's prefix, in the layout they were put with.
    objects_round_trip(&store).await;
    use object_store::ObjectStoreExt;
    let blob = store
        .client()
        .get(&object_store::path::Path::from(
            "prod/_captures/m/2026/12/07/02/s1-1765072800000-0.jsonl",
        ))
        .await
        .unwrap();
    assert_eq!(&blob.bytes().await.unwrap()[..], b"{}\n");
}

/// On Azure a version written by the store carries its SHA-256 as blob metadata, which
/// `digest` reads with one `HEAD`; a blob put by another tool without it is read and
/// hashed.
#[tokio::test]
async fn the_azure_store_keeps_the_digest_in_metadata_and_hashes_blobs_without_it() {
    use object_store::{
        Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
    };

    let azurite = Azurite::start().await;
    let store = prod_store(&azurite).await;
    let m = id();
    let body = b"version one".to_vec();
    store
        .write_version(&m, 1, Bytes::from(body.clone()))
        .await
        .unwrap();
    // The metadata is on the blob, as object_store reads it back.
    let path = object_store::path::Path::from("prod/m/1/model.onnx");
    let head = store
        .client()
        .get_opts(
            &path,
            object_store::GetOptions {
                head: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let metadata = Attribute::Metadata(azure::SHA256_METADATA.into());
    assert_eq!(
        head.attributes.get(&metadata).map(|v| v.as_ref()),
        Some(sha256_hex(&body).as_str())
    );
    assert_eq!(store.digest(&m, 1).await.unwrap(), Digest::of(&body));
    // The digest is the metadata, not a download: a blob whose metadata names another
    // hash answers that hash.
    let claimed = sha256_hex(b"something else");
    store
        .client()
        .put_opts(
            &object_store::path::Path::from("prod/m/2/model.onnx"),
            PutPayload::from(b"version two".to_vec()),
            PutOptions {
                attributes: Attributes::from_iter([(metadata.clone(), claimed.clone())]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.digest(&m, 2).await.unwrap(),
        Digest {
            bytes: 11,
            sha256: claimed
        }
    );
    // A blob put by plain object_store, without metadata, is read and hashed.
    let plain = b"uploaded by another tool".to_vec();
    store
        .client()
        .put(
            &object_store::path::Path::from("prod/m/3/model.onnx"),
            PutPayload::from(plain.clone()),
        )
        .await
        .unwrap();
    assert_eq!(store.digest(&m, 3).await.unwrap(), Digest::of(&plain));
    // And one put over plain HTTP (the harness's Shared Key client) too.
    azurite
        .put_blob("models", "prod/m/4/model.onnx", b"raw".to_vec())
        .await;
    assert_eq!(store.digest(&m, 4).await.unwrap(), Digest::of(b"raw"));
    assert!(matches!(
        store.digest(&m, 5).await,
        Err(StoreError::NotFound)
    ));
}
