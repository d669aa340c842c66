//! Conformance of API tokens: stored by hash, listed, revoked once ([`crate::Tokens`]).

use super::*;

/// Runs every case of this module, each against a fresh store from `make`.
pub async fn run_all<S: Store, Fut: Future<Output = S>>(make: impl Fn() -> Fut) {
    case("tokens::tokens", Arc::new(make().await), tokens).await;
}

/// Tokens are stored by hash, listed oldest first, found by hash, revoked once.
pub async fn tokens(store: Arc<dyn Store>) {
    let token = |id: &str, hash: &str, at: Micros| TokenRow {
        id: id.into(),
        user: format!("user-{id}"),
        role: "operator".into(),
        hash: hash.into(),
        created_at: at,
        revoked_at: None,
        expires_at: None,
    };
    assert!(store.list_tokens().await.unwrap().is_empty());
    store.create_token(token("t1", "h1", 10)).await.unwrap();
    store.create_token(token("t2", "h2", 20)).await.unwrap();
    // Neither the id nor the hash may repeat.
    assert!(matches!(
        store.create_token(token("t1", "h9", 30)).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.create_token(token("t9", "h2", 30)).await,
        Err(StoreError::Invalid(_))
    ));
    let all = store.list_tokens().await.unwrap();
    assert_eq!(
        all.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["t1", "t2"]
    );
    assert_eq!(
        store.token_by_hash("h2").await.unwrap(),
        Some(token("t2", "h2", 20))
    );
    assert_eq!(store.token_by_hash("nope").await.unwrap(), None);
    assert!(store.revoke_token("t1", 40).await.unwrap());
    assert!(!store.revoke_token("t1", 50).await.unwrap(), "revoked once");
    assert!(!store.revoke_token("unknown", 50).await.unwrap());
    let revoked = store.token_by_hash("h1").await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(40));
    // An expiry is kept as given.
    let expiring = TokenRow {
        expires_at: Some(1_000),
        ..token("t3", "h3", 60)
    };
    store.create_token(expiring.clone()).await.unwrap();
    assert_eq!(store.token_by_hash("h3").await.unwrap(), Some(expiring));
}
