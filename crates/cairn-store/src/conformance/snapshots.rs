//! Conformance of snapshots: the newest at or before a seq, replaced when saved again ([`crate::Snapshots`]).

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
    // Backends may drop old snapshots, but the newest is always kept and answers for the head.
    for s in 16..=21 {
        store.put_snapshot("p", s, vec![s as u8]).await.unwrap();
    }
    assert_eq!(
        store.get_snapshot("p", 21).await.unwrap(),
        Some((21, vec![21]))
    );
    assert_eq!(
        store.get_snapshot("p", 20).await.unwrap(),
        Some((20, vec![20]))
    );
    if let Some((seq, _)) = store.get_snapshot("p", 12).await.unwrap() {
        assert_eq!(seq, 10);
    }
}
