//! What a node of a cluster does besides driving its plans: it sends heartbeats, takes over the
//! plans of nodes that stopped renewing their leases, and forwards requests for plans another
//! node drives (see [`crate::cluster`] for the wire format and the rules).

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use crate::cluster::{give_up_after, poll_period, Counters, PeerError, Peers, Reply, Request};
use crate::engine::Inner;
use crate::{Engine, EngineError};

/// "Not owner" answers naming a new owner that are followed at once; later ones wait a poll
/// period first, so nodes that disagree about a plan's owner never ask each other in a tight
/// loop (the deadline still bounds it all).
const MAX_QUICK_HOPS: u32 = 3;

/// Most plans whose leases one `Leases::renew` call renews.
const RENEW_CHUNK: usize = 1024;

/// Most plans taken over in one round.
const TAKE_OVER_LIMIT: usize = 64;

/// Every third of a lease period: how often a node heartbeats and looks for plans to take over.
fn period(lease_ms: u64) -> Duration {
    Duration::from_millis(lease_ms / 3).max(Duration::from_millis(10))
}

/// Records this node's heartbeat every third of a lease period, until the engine shuts down.
pub(crate) async fn heartbeats(inner: Weak<Inner>, started_at: i64) {
    loop {
        let Some(every) = inner.upgrade().map(|i| period(i.opts.lease_ms)) else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(inner) = live(&inner) else { return };
        let opts = &inner.opts;
        if let Err(e) = inner
            .store
            .heartbeat(&opts.node_id, opts.advertise.as_deref(), started_at)
            .await
        {
            warn!(node = %opts.node_id, error = %e, "cannot record the node's heartbeat");
        }
    }
}

/// Renews the leases of every plan this engine drives, every third of a lease period, with one
/// store call ([`cairn_store::Leases::renew`]: one statement on PostgreSQL) per 1,024 plans,
/// until the engine shuts down. It rests while no plan is live (no timer runs then). A plan
/// whose lease was not renewed (another node took it over after it ran out, or it was released
/// or deleted) hears it from here and stops driving the plan; its appends are fenced anyway. A
/// store that cannot answer is asked again within a second: meanwhile no other node can write
/// the lease either.
pub(crate) async fn renewals(inner: Weak<Inner>) {
    let mut next: Option<Instant> = None;
    loop {
        let Some(strong) = live(&inner) else { return };
        let every = period(strong.opts.lease_ms);
        let leases = strong.live_leases();
        if leases.is_empty() {
            let wake = strong.actor_started.clone();
            drop(strong);
            let started = wake.notified();
            // Woken by the next actor (whose claim runs a full lease), or now and then to
            // see whether the engine is gone.
            let _ = tokio::time::timeout(Duration::from_secs(3600), started).await;
            next = None;
            continue;
        }
        drop(strong);
        match next {
            // The first plan's claim is fresh: its first renewal is a period away.
            None => {
                next = Some(Instant::now() + every);
                continue;
            }
            Some(at) if Instant::now() < at => {
                tokio::time::sleep_until(at).await;
                continue;
            }
            Some(_) => {}
        }
        let Some(strong) = live(&inner) else { return };
        // The leases as they are now (actors came and went while this waited).
        let leases = strong.live_leases();
        let asked: Vec<(String, u64)> = leases
            .iter()
            .map(|(id, token, _)| (id.clone(), *token))
            .collect();
        let now = strong.now().as_micros();
        let node = strong.opts.node_id.clone();
        let lease_ms = strong.opts.lease_ms;
        let store = strong.store.clone();
        drop(strong);
        // In chunks, so that a node driving very many plans never holds up its own appends
        // (which lock the same lease rows) behind one long statement.
        let mut answered: Result<Vec<String>, cairn_store::StoreError> = Ok(Vec::new());
        for chunk in asked.chunks(RENEW_CHUNK) {
            match store.renew(&node, chunk, lease_ms, now).await {
                Ok(renewed) => {
                    if let Ok(all) = &mut answered {
                        all.extend(renewed);
                    }
                }
                Err(e) => {
                    answered = Err(e);
                    break;
                }
            }
        }
        match answered {
            Ok(renewed) => {
                next = Some(Instant::now() + every);
                let renewed: std::collections::HashSet<String> = renewed.into_iter().collect();
                let Some(strong) = live(&inner) else { return };
                for (plan_id, token, tx) in leases {
                    if !renewed.contains(&plan_id) {
                        warn!(node = %node, %plan_id, token, "the plan's lease was not renewed (taken over, released or deleted); stop driving it");
                        let _ = strong.post(&tx, crate::actor::Msg::LeaseLost);
                    }
                }
            }
            Err(e) => {
                // Fencing keeps the plans safe; renew again shortly.
                warn!(node = %node, plans = asked.len(), error = %e, "cannot renew the leases of the plans this node drives; trying again");
                next = Some(Instant::now() + every.min(Duration::from_secs(1)));
            }
        }
    }
}

/// Takes over, every third of a lease period, the active plans whose lease ran out without
/// being released (their node died, hung or lost the store), and drives them from here: each is
/// recovered as after a restart. So a plan waits at most one lease period for its lease to run
/// out and a third of one more to be taken: failover within two lease periods.
///
/// A node shutting down gracefully keeps the leases of the plans it was driving (they run out
/// and are taken over here); it releases only those of plans with nothing left to do, which
/// need no driver until someone asks.
pub(crate) async fn take_overs(inner: Weak<Inner>) {
    let states = cairn_core::PlanStatus::active_names();
    loop {
        let Some(every) = inner.upgrade().map(|i| period(i.opts.lease_ms)) else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(inner) = live(&inner) else { return };
        let now = inner.now().as_micros();
        let taken = match inner
            .store
            .take_over(
                &inner.opts.node_id,
                inner.opts.lease_ms,
                &states,
                TAKE_OVER_LIMIT,
                now,
            )
            .await
        {
            Ok(taken) => taken,
            Err(e) => {
                warn!(node = %inner.opts.node_id, error = %e, "cannot look for plans to take over");
                continue;
            }
        };
        let engine = Engine::from_inner(inner);
        for (plan_id, fence) in taken {
            debug!(node = %fence.node, %plan_id, token = fence.token, "taking the plan over");
            if let Err(e) = engine.adopt(&plan_id, fence).await {
                // Its lease is this node's now: it runs out again and the plan is taken once
                // more (here or elsewhere).
                warn!(%plan_id, error = %e, "cannot load a plan taken over");
            }
        }
    }
}

fn live(inner: &Weak<Inner>) -> Option<Arc<Inner>> {
    inner
        .upgrade()
        .filter(|i| !i.closed.load(std::sync::atomic::Ordering::Acquire))
}

/// Gets `request` carried out by the node that drives its plan, starting with `owner`. A "not
/// owner" answer names the next node to ask; between asks the request is tried here too (the
/// plan may have moved to this node, or be free to claim). When the owner cannot be reached,
/// waits for its lease to run out, then claims the plan here. Gives up after
/// [`give_up_after`] with `StorageUnavailable` naming the node that could not be reached.
pub(crate) async fn forward(
    engine: &Engine,
    peers: &dyn Peers,
    request: Request,
    mut owner: String,
) -> Result<Reply, EngineError> {
    let inner = engine.inner().clone();
    let me = inner.opts.node_id.clone();
    let lease_ms = inner.opts.lease_ms;
    let deadline = Instant::now() + give_up_after(lease_ms);
    let bytes = request.encode();
    let plan_id = request.plan_id().to_owned();
    let mut unreachable: Option<String> = None;
    let mut hops = 0u32;
    loop {
        let mut pause = true;
        hops += 1;
        if owner != me {
            match peers.forward(&owner, bytes.clone()).await {
                Ok(answer) => {
                    Counters::bump(&inner.counters.forwarded);
                    match serde_json::from_slice::<Reply>(&answer) {
                        Ok(Reply::NotOwner { owner: next }) => {
                            debug!(%plan_id, asked = %owner, %next, "not the owner; asking again");
                            // A new name is worth asking at once (the first few times); the
                            // same one after a pause.
                            pause = next == owner || hops > MAX_QUICK_HOPS;
                            owner = next;
                            unreachable = None;
                        }
                        // An owner shutting down is as good as gone: its lease runs out
                        // (it keeps the leases of plans that need driving).
                        Ok(Reply::Error {
                            error: crate::cluster::WireError::ShuttingDown,
                        }) => {
                            Counters::bump(&inner.counters.forward_failures);
                            wait_for_lease(&inner, &plan_id, &owner, deadline).await;
                            unreachable = Some("it is shutting down".to_owned());
                            pause = false;
                        }
                        Ok(Reply::Error { error }) => return Err(error.into()),
                        Ok(reply) => return Ok(reply),
                        Err(e) => {
                            return Err(EngineError::Store(cairn_store::StoreError::Backend(
                                format!(
                                    "node {owner} answered a forwarded request unreadably: {e}"
                                ),
                            )))
                        }
                    }
                }
                Err(PeerError::Unreachable { reason, .. }) => {
                    Counters::bump(&inner.counters.forward_failures);
                    debug!(%plan_id, %owner, %reason, "owner unreachable; waiting for its lease");
                    wait_for_lease(&inner, &plan_id, &owner, deadline).await;
                    unreachable = Some(reason);
                    pause = false;
                }
                Err(e @ PeerError::Refused { .. }) => {
                    Counters::bump(&inner.counters.forward_failures);
                    return Err(EngineError::Store(cairn_store::StoreError::Backend(
                        e.to_string(),
                    )));
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(give_up(&plan_id, &owner, unreachable.as_deref(), lease_ms));
        }
        if pause {
            tokio::time::sleep(poll_period(lease_ms)).await;
        }
        match engine.carry_here(request.clone()).await {
            Err(EngineError::NotOwner { owner: next, .. }) => {
                if next != owner {
                    unreachable = None;
                }
                owner = next;
            }
            other => return other,
        }
    }
}

fn give_up(plan_id: &str, owner: &str, unreachable: Option<&str>, lease_ms: u64) -> EngineError {
    let why = match unreachable {
        Some(reason) => format!("node {owner}, which drives it, cannot be reached ({reason})"),
        None => format!("node {owner} drives it and did not carry the request out"),
    };
    EngineError::StorageUnavailable(format!(
        "plan {plan_id}: {why}, and its lease did not run out within {} ms",
        give_up_after(lease_ms).as_millis()
    ))
}

/// Waits, polling the store, until `owner`'s lease on the plan ran out, was released, moved
/// to another node or was renewed (the owner is back: a node restarted under the same id
/// renews its leases, and is worth asking again), or `deadline` came.
async fn wait_for_lease(inner: &Inner, plan_id: &str, owner: &str, deadline: Instant) {
    let poll = poll_period(inner.opts.lease_ms);
    let mut first_expiry: Option<i64> = None;
    loop {
        let lease = match inner.store.lease(plan_id).await {
            Ok(lease) => lease,
            Err(e) => {
                debug!(%plan_id, error = %e, "cannot read the plan's lease");
                None
            }
        };
        // Unreadable or unknown: try again after one pause, so an unreachable owner is not
        // asked in a tight loop.
        let (wait, again) = match lease {
            Some(l) if l.owner == owner && !l.released => {
                if *first_expiry.get_or_insert(l.expires_at) < l.expires_at {
                    return;
                }
                let left = l.expires_at - inner.now().as_micros();
                if left <= 0 {
                    return;
                }
                (poll.min(Duration::from_micros(left as u64)), true)
            }
            // Moved or released: try again at once.
            Some(_) => return,
            None => (poll, false),
        };
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        tokio::time::sleep(wait.min(deadline - now)).await;
        if !again {
            return;
        }
    }
}
