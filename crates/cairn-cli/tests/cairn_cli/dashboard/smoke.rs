//! Signing in and the shell: the pages load under the CSP with no console error.

use serde_json::json;

use super::harness::{skipped, Browser, Serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_with_a_token_and_see_the_plans_then_sign_out() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&[]);
    serve
        .post(
            "/v1/plans",
            json!({"plan_id": "smoke-1", "query": "a smoke test",
                   "steps": [{"step_id": "a", "action": "echo", "agent_type": "builtin.echo", "params": {}}]}),
        )
        .await;
    let admin = serve
        .admin
        .clone()
        .expect("the first start prints an admin token");
    let b = Browser::start("sign_in").await;
    b.open(&serve.base, "/").await;
    // Without a token the page asks for one.
    b.find("#token").await;
    // A wrong token is refused on the page.
    b.find("#token")
        .await
        .send_keys("cairn_wrong")
        .await
        .unwrap();
    b.click("#signin").await;
    b.until_text("form.signin [role=alert]", "refusal shown", |t| {
        t.contains("not accepted")
    })
    .await;
    b.find("#token").await.clear().await.unwrap();
    b.sign_in(&serve.base, &admin).await;
    b.until_text("#plans-body", "the plan listed", |t| t.contains("smoke-1"))
        .await;
    let who = b.text("#who").await;
    assert!(who.contains("admin"), "{who}");
    b.screenshot("plans").await;
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_needs_no_sign_in_and_every_page_carries_a_strict_csp() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&["--no-auth"]);
    for path in ["/", "/docs", "/ui/js/app.js", "/ui/app.css"] {
        let res = reqwest::get(format!("{}{path}", serve.base)).await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let csp = res.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{path}: {csp}"
        );
    }
    let res = reqwest::get(format!("{}/ui/nope.js", serve.base))
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let b = Browser::start("no_auth").await;
    b.open(&serve.base, "/").await;
    b.find("#plans").await;
    b.finish().await;
}
