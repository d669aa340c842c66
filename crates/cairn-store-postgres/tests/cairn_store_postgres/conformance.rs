//! The PostgreSQL store against the conformance suite, cluster cases included.

use cairn_store::conformance;

use crate::{database_url, fresh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    let Some(url) = database_url() else { return };
    conformance::run_all(|| fresh(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_cluster_conformance_cases() {
    let Some(url) = database_url() else { return };
    conformance::cluster::run_all(|| fresh(&url)).await;
}
