//! `cairn serve` and `cairn token` on PostgreSQL (`--database-url`), each test on a database of
//! its own: nodes that see each other, node ids held by one process, tokens shared by every
//! node (and a revocation reaching every node), and the messages for a database that cannot be
//! used. Skipped (with a note) without `CAIRN_TEST_DATABASE_URL`.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::common::{cairn_command, Api, Run, Server, TestDatabase, LIMIT};

/// `cairn ARGS --database-url URL`.
fn on(db: &TestDatabase, args: &[&str]) -> Run {
    let mut shown = args.to_vec();
    shown.extend(["--database-url", "…"]);
    Run::of(
        cairn_command(args).arg("--database-url").arg(&db.url),
        &shown,
    )
}

/// A token made with `cairn token create --database-url`.
fn token(db: &TestDatabase, user: &str, role: &str) -> String {
    on(db, &["token", "create", "--user", user, "--role", role])
        .expect(0, "cairn token create")
        .stdout
        .trim()
        .to_owned()
}

fn node(dir: &std::path::Path, db: &TestDatabase, id: &str) -> Server {
    Server::postgres(dir, &db.url)
        .args(&["--node-id", id, "--lease-ms", "2000"])
        .start()
}

/// Polls `GET path` on `api` as `token` until `pred` holds (bounded by [`LIMIT`]).
async fn until(api: &Api, path: &str, token: &str, what: &str, pred: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let r = api.call(Method::GET, path, Some(token), None).await;
        if r.status == 200 && pred(&r.body) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: last answer {} {}",
            r.status,
            r.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_tokens_and_list_each_other() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let admin = token(&db, "root", "admin");
    let mut a = node(dir.path(), &db, "node-a");
    let b = node(dir.path(), &db, "node-b");
    assert!(
        a.admin.is_none() && b.admin.is_none(),
        "a token existed: none is made"
    );

    // The token made on the database works on both nodes, and each lists both.
    for (me, other, server) in [("node-a", "node-b", &a), ("node-b", "node-a", &b)] {
        let api = Api::new(&server.base);
        until(&api, "/v1/nodes", &admin, "both nodes listed", |v| {
            let nodes = v["nodes"].as_array().unwrap();
            nodes.len() == 2
                && nodes
                    .iter()
                    .any(|n| n["node_id"] == me && n["self"] == true)
                && nodes
                    .iter()
                    .any(|n| n["node_id"] == other && n["self"] == false)
        })
        .await;
        let r = api.call(Method::GET, "/v1/nodes", Some(&admin), None).await;
        let this = r.body["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == me)
            .unwrap()
            .clone();
        assert_eq!(this["address"], server.base.as_str(), "{this}");
        assert_eq!(this["alive"], true, "{this}");
    }

    // `cairn token list` reads the same tokens.
    let list = on(&db, &["token", "list", "--json"])
        .expect(0, "token list")
        .json();
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");

    // `cairn nodes` on the database itself: both, neither marked as the answering node.
    let v = on(&db, &["nodes", "--json"])
        .expect(0, "cairn nodes")
        .json();
    let ids: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            assert_eq!(n["self"], false, "{n}");
            n["node_id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids, ["node-a", "node-b"]);

    // A node that stops is still listed, as gone once its heartbeats are three leases old.
    assert_eq!(a.term(), Some(0));
    let api = Api::new(&b.base);
    until(&api, "/v1/nodes", &admin, "node-a gone", |v| {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node_id"] == "node-a" && n["alive"] == false)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_on_one_node_is_refused_by_the_other() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let admin = token(&db, "root", "admin");
    let viewer = token(&db, "eve", "viewer");
    let a = node(dir.path(), &db, "node-a");
    let b = node(dir.path(), &db, "node-b");
    let (api_a, api_b) = (Api::new(&a.base), Api::new(&b.base));
    // Both nodes have the token in their caches.
    for api in [&api_a, &api_b] {
        let r = api
            .call(Method::GET, "/v1/whoami", Some(&viewer), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let id = api_a
        .call(Method::GET, "/v1/tokens", Some(&admin), None)
        .await
        .body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["user"] == "eve")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = api_a
        .call(
            Method::DELETE,
            &format!("/v1/tokens/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert!((200..300).contains(&r.status), "{}", r.text);
    let revoked = Instant::now();
    // The node that revoked it refuses it at once; the other once its cache entry is stale.
    let r = api_a
        .call(Method::GET, "/v1/whoami", Some(&viewer), None)
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
    let deadline = Instant::now() + LIMIT;
    loop {
        let r = api_b
            .call(Method::GET, "/v1/whoami", Some(&viewer), None)
            .await;
        if r.status == 401 {
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(
            Instant::now() < deadline,
            "node-b still accepts a revoked token"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Not asserted (the test machine may be slow): the promise is 5 s, the cache holds 2 s.
    eprintln!(
        "node-b refused the revoked token {:?} after the revocation",
        revoked.elapsed()
    );
}

#[test]
fn a_node_id_is_held_by_one_process_and_bad_databases_are_named() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let _a = node(dir.path(), &db, "twin");
    let run = Run::of(
        cairn_command(&["serve", "--bind", "127.0.0.1:0", "--node-id", "twin"])
            .arg("--database-url")
            .arg(&db.url),
        &["serve", "--node-id", "twin", "--database-url", "…"],
    )
    .expect(1, "a second process with the same node id");
    assert!(
        run.stderr.contains("--node-id twin") && run.stderr.contains("in use"),
        "{}",
        run.stderr
    );

    // Nothing listens on port 1: the message names the URL, never the password.
    let run = Run::of(
        &mut cairn_command(&[
            "token",
            "list",
            "--database-url",
            "postgres://app:s3cret@127.0.0.1:1/cairn",
        ]),
        &[
            "token",
            "list",
            "--database-url",
            "postgres://app:***@127.0.0.1:1/cairn",
        ],
    )
    .expect(1, "an unreachable database");
    assert!(
        run.stderr.contains("postgres://app:***@127.0.0.1:1/cairn"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("s3cret"), "{}", run.stderr);

    let run = Run::of(
        &mut cairn_command(&["serve", "--database-url", "mysql://db/cairn"]),
        &["serve", "--database-url", "mysql://db/cairn"],
    )
    .expect(2, "not a PostgreSQL URL");
    assert!(run.stderr.contains("--database-url"), "{}", run.stderr);
}
