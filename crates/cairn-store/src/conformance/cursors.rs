//! Conformance of named cursors ([`crate::Cursors`]).

use super::*;

/// Runs every case of this module, each against a fresh store from `make`.
pub async fn run_all<S: Store, Fut: Future<Output = S>>(make: impl Fn() -> Fut) {
    case("cursors::cursors", Arc::new(make().await), cursors).await;
}

/// Cursors start unset, and keep the last value set.
pub async fn cursors(store: Arc<dyn Store>) {
    assert_eq!(store.get_cursor("webhook:a").await.unwrap(), None);
    store.set_cursor("webhook:a", 7).await.unwrap();
    store.set_cursor("webhook:b", 1).await.unwrap();
    store.set_cursor("webhook:a", 42).await.unwrap();
    assert_eq!(store.get_cursor("webhook:a").await.unwrap(), Some(42));
    assert_eq!(store.get_cursor("webhook:b").await.unwrap(), Some(1));
}
