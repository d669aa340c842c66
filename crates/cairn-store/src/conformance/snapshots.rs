//! Conformance of snapshots: the newest at or before a seq, replaced when saved again, none
//! dropped ([`crate::Snapshots`]).

use super::*;

/// Runs every case of this module, each against a fresh store from `make`.
pub async fn run_all<S: Store, Fut: Future<Output = S>>(make: impl Fn() -> Fut) {
    case("snapshots::snapshots", Arc::new(make().await), snapshots).await;
}

pub async fn snapshots(store: Arc<dyn Store>) {
    store.create_plan(create("p", 1, 1)).await.unwrap();
    store.append(append("p", 1, 20)).await.unwrap();
    assert_eq!(store.get_snapshot("p", 100).await.unwrap(), None);
    store.put_snapshot("p", 10, b"ten".to_vec()).await.unwrap();
    store
        .put_snapshot("p", 15, b"fifteen".to_vec())
        .await
        .unwrap();
    assert_eq!(store.get_snapshot("p", 9).await.unwrap(), None);
    assert_eq!(
        store.get_snapshot("p", 10).await.unwrap(),
        Some((10, b"ten".to_vec()))
    );
    assert_eq!(
        store.get_snapshot("p", 14).await.unwrap(),
        Some((10, b"ten".to_vec()))
    );
    assert_eq!(
        store.get_snapshot("p", 21).await.unwrap(),
        Some((15, b"fifteen".to_vec()))
    );
    // Re-saving a seq replaces it.
    store
        .put_snapshot("p", 15, b"fifteen'".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.get_snapshot("p", u64::MAX).await.unwrap(),
        Some((15, b"fifteen'".to_vec()))
    );
    // Every snapshot is kept (the engine chooses their spacing), so an old position replays
    // from the one nearest before it however many were saved since.
    for s in 16..=20 {
        store.put_snapshot("p", s, vec![s as u8]).await.unwrap();
    }
    assert_eq!(
        store.get_snapshot("p", 20).await.unwrap(),
        Some((20, vec![20]))
    );
    assert_eq!(
        store.get_snapshot("p", 17).await.unwrap(),
        Some((17, vec![17]))
    );
    store.append(append("p", 21, 39)).await.unwrap();
    for s in 21..=60 {
        store.put_snapshot("p", s, vec![s as u8]).await.unwrap();
    }
    assert_eq!(
        store.get_snapshot("p", 12).await.unwrap(),
        Some((10, b"ten".to_vec()))
    );
    assert_eq!(
        store.get_snapshot("p", 60).await.unwrap(),
        Some((60, vec![60]))
    );
}
