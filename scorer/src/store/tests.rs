//! Both stores through the same checks: the alias and the canary are written atomically,
//! read back in the one model look-up, changed, and removed.

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
            canary: None
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
        matches!(&error, StoreError::Unavailable(m) if m.contains(CANARY_FILE)),
        "{error}"
    );
}

#[tokio::test]
async fn the_azure_store_writes_and_reads_the_alias_and_the_canary() {
    let azurite = Azurite::start().await;
    azurite.create_container("models").await;
    let config = AzureStoreConfig {
        account: azurite::ACCOUNT.into(),
        container: "models".into(),
        prefix: "prod/".into(),
        // Azurite names the account in the path, as object_store's emulator mode does.
        endpoint: Some(format!("{}/{}", azurite.url, azurite::ACCOUNT)),
        use_emulator: false,
        credential: AzureCredential::AccessKey(Secret::new(azurite::KEY)),
    };
    let store = AzureStore::new(&config).unwrap();
    alias_and_canary_round_trip(&store).await;
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
}
