//! Conformance of named templates: numbered versions, identical pushes, paging of the latest
//! versions, deletion that keeps every version ([`crate::Templates`]).

use super::*;
use crate::{NewTemplateVersion, TemplateRow};

/// Runs every case of this module, each against a fresh store from `make`.
pub async fn run_all<S: Store, Fut: Future<Output = S>>(make: impl Fn() -> Fut) {
    case(
        "templates::versions_are_numbered_and_identical_pushes_create_none",
        Arc::new(make().await),
        versions_are_numbered_and_identical_pushes_create_none,
    )
    .await;
    case(
        "templates::the_list_pages_the_latest_of_each_live_name",
        Arc::new(make().await),
        the_list_pages_the_latest_of_each_live_name,
    )
    .await;
    case(
        "templates::delete_hides_a_name_and_keeps_its_versions",
        Arc::new(make().await),
        delete_hides_a_name_and_keeps_its_versions,
    )
    .await;
    case(
        "templates::concurrent_pushes_number_versions_without_gaps",
        Arc::new(make().await),
        concurrent_pushes_number_versions_without_gaps,
    )
    .await;
}

fn push(name: &str, content: &str, at: Micros) -> NewTemplateVersion {
    NewTemplateVersion {
        name: name.into(),
        content: content.into(),
        created_at: at,
        created_by: "ann".into(),
    }
}

fn versions(rows: &[TemplateRow]) -> Vec<(String, u64)> {
    rows.iter().map(|r| (r.name.clone(), r.version)).collect()
}

/// Versions count from 1 per name; pushing the latest content again answers the latest and
/// stores nothing; pushing an older content again is a new version.
pub async fn versions_are_numbered_and_identical_pushes_create_none(store: Arc<dyn Store>) {
    assert_eq!(store.get_template("t", None).await.unwrap(), None);
    assert!(store.template_versions("t").await.unwrap().is_empty());
    let (v1, created) = store
        .put_template_version(push("t", "{\"a\":1}", 10))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(
        v1,
        TemplateRow {
            name: "t".into(),
            version: 1,
            content: "{\"a\":1}".into(),
            created_at: 10,
            created_by: "ann".into(),
            deleted_at: None,
        }
    );
    let (same, created) = store
        .put_template_version(push("t", "{\"a\":1}", 20))
        .await
        .unwrap();
    assert!(!created, "an identical push creates no version");
    assert_eq!(same, v1, "and answers the latest as it was stored");
    let (v2, created) = store
        .put_template_version(push("t", "{\"a\":2}", 30))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(v2.version, 2);
    // The first content again is new relative to the latest.
    let (v3, created) = store
        .put_template_version(push("t", "{\"a\":1}", 40))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(v3.version, 3);
    // Another name numbers its own versions.
    let (other, _) = store
        .put_template_version(push("u", "{}", 50))
        .await
        .unwrap();
    assert_eq!(other.version, 1);

    assert_eq!(
        store.get_template("t", None).await.unwrap(),
        Some(v3.clone())
    );
    assert_eq!(store.get_template("t", Some(2)).await.unwrap(), Some(v2));
    assert_eq!(store.get_template("t", Some(1)).await.unwrap(), Some(v1));
    assert_eq!(store.get_template("t", Some(4)).await.unwrap(), None);
    assert_eq!(store.get_template("t", Some(0)).await.unwrap(), None);
    assert_eq!(
        store
            .template_versions("t")
            .await
            .unwrap()
            .iter()
            .map(|r| (r.version, r.content.as_str(), r.created_at))
            .collect::<Vec<_>>(),
        [
            (1, "{\"a\":1}", 10),
            (2, "{\"a\":2}", 30),
            (3, "{\"a\":1}", 40)
        ]
    );
}

/// The list holds the latest version of each live name, by name, in pages whose cursors
/// continue exactly where the previous page stopped.
pub async fn the_list_pages_the_latest_of_each_live_name(store: Arc<dyn Store>) {
    assert!(matches!(
        store.list_templates(0, None).await,
        Err(StoreError::Invalid(_))
    ));
    let empty = store.list_templates(10, None).await.unwrap();
    assert!(empty.items.is_empty());
    assert_eq!(empty.next_cursor, None);
    for (i, name) in ["delta", "alpha", "Echo", "charlie", "bravo"]
        .iter()
        .enumerate()
    {
        store
            .put_template_version(push(name, "{}", i as Micros))
            .await
            .unwrap();
    }
    store
        .put_template_version(push("bravo", "{\"b\":2}", 9))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store.list_templates(2, cursor.as_deref()).await.unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(versions(&page.items));
        pages += 1;
        assert!(pages <= 3, "three pages hold five names");
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    // Byte order: upper case before lower case.
    assert_eq!(
        seen,
        [
            ("Echo".to_owned(), 1),
            ("alpha".to_owned(), 1),
            ("bravo".to_owned(), 2),
            ("charlie".to_owned(), 1),
            ("delta".to_owned(), 1),
        ]
    );
    let all = store.list_templates(100, None).await.unwrap();
    assert_eq!(all.items.len(), 5);
    assert_eq!(all.next_cursor, None);
    assert_eq!(all.items[2].content, "{\"b\":2}");
}

/// A deleted name leaves the list, keeps every version readable (marked deleted), is deleted
/// once, and is live again after a push.
pub async fn delete_hides_a_name_and_keeps_its_versions(store: Arc<dyn Store>) {
    assert!(
        !store.delete_template("t", 5).await.unwrap(),
        "unknown name"
    );
    store
        .put_template_version(push("t", "{\"a\":1}", 10))
        .await
        .unwrap();
    store
        .put_template_version(push("t", "{\"a\":2}", 20))
        .await
        .unwrap();
    store
        .put_template_version(push("u", "{}", 30))
        .await
        .unwrap();
    assert!(store.delete_template("t", 40).await.unwrap());
    assert!(
        !store.delete_template("t", 50).await.unwrap(),
        "deleted once"
    );
    let listed = store.list_templates(10, None).await.unwrap();
    assert_eq!(versions(&listed.items), [("u".to_owned(), 1)]);
    let latest = store.get_template("t", None).await.unwrap().unwrap();
    assert_eq!((latest.version, latest.deleted_at), (2, Some(40)));
    let kept = store.template_versions("t").await.unwrap();
    assert_eq!(kept.len(), 2);
    assert!(kept.iter().all(|r| r.deleted_at == Some(40)));

    // Pushing the same content again revives the name without a new version.
    let (again, created) = store
        .put_template_version(push("t", "{\"a\":2}", 60))
        .await
        .unwrap();
    assert!(!created);
    assert_eq!((again.version, again.deleted_at), (2, None));
    assert_eq!(store.list_templates(10, None).await.unwrap().items.len(), 2);
    assert!(store.delete_template("t", 70).await.unwrap());
    // A new content after a delete continues the numbering.
    let (v3, created) = store
        .put_template_version(push("t", "{\"a\":3}", 80))
        .await
        .unwrap();
    assert!(created);
    assert_eq!((v3.version, v3.deleted_at), (3, None));
}

/// Pushes of one name racing each other get versions 1..=n, none lost, none twice.
pub async fn concurrent_pushes_number_versions_without_gaps(store: Arc<dyn Store>) {
    const N: u64 = 16;
    let mut tasks = Vec::new();
    for i in 0..N {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .put_template_version(push("race", &format!("{{\"i\":{i}}}"), i as Micros))
                .await
                .unwrap()
        }));
    }
    let mut numbers = HashSet::new();
    for t in tasks {
        let (row, created) = t.await.unwrap();
        assert!(created);
        assert!(numbers.insert(row.version), "version {} twice", row.version);
    }
    assert_eq!(numbers, (1..=N).collect::<HashSet<_>>());
    assert_eq!(
        store.template_versions("race").await.unwrap().len() as u64,
        N
    );
}
