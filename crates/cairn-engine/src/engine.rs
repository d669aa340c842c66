//! The engine: the public face of cairn as a library. It keeps one actor per live plan
//! ([`crate::actor`]), loads plans from the store on demand, recovers running plans on open, and
//! answers reads (state, events, checkpoints, snapshots) from the store and the actors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cairn_core::decide::SYSTEM_ACTOR;
use cairn_core::diff::Diff;
use cairn_core::event::{checkpoint_id, checkpoint_seq, CheckpointTrigger, Origin};
use cairn_core::history::{AttemptLog, AttemptSpan, StepAttempts, StepDetail, ATTEMPT_EVENTS};
use cairn_core::versions::{PlanDiff, PlanVersion, VersionFold, VersionedDefinition};
use cairn_core::view::{
    is_settled, CheckpointSummary, CheckpointView, Page, PlanSummary, PlanView, Snapshot,
};
use cairn_core::{
    Command, Event, Intervention, InterventionRequest, Micros, PauseMode, Plan, PlanState,
    PlanStatus, Timestamp,
};
use cairn_store::{CreatePlan, PlanRow, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::actor::{Answer, Msg, PlanActor};
use crate::clock::{Clock, SystemClock};
use crate::cluster::{Reply, Request};
use crate::convert::{from_stored, to_new};
use crate::executor::{Executor, Registry};
use crate::publish::{self, Notice, Subscription};
use crate::EngineError;

/// The wall clock, now (the system clock; an engine reads its [`EngineOptions::clock`]).
pub fn now() -> Timestamp {
    SystemClock.now()
}

/// Microseconds since the Unix epoch, now (what stores keep).
pub fn now_micros() -> i64 {
    now().as_micros()
}

/// How an engine runs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// This node's name in plan leases.
    pub node_id: String,
    /// How long a lease on a plan lasts without renewal.
    pub lease_ms: u64,
    /// A state snapshot is stored every this many events of a plan (0 = never); a plan of more
    /// than four times as many steps is snapshotted every `steps / 4` events instead. The store
    /// keeps every snapshot, so any checkpoint's state replays at most that many events.
    pub snapshot_every: u64,
    /// Events the live stream buffers for slow subscribers before they lag.
    pub stream_buffer: usize,
    /// Resume every running and paused plan of the store when the engine opens. `cairn run`
    /// turns this off and recovers only the plan it drives.
    pub recover: bool,
    /// Run attempts. An engine that does not (administrative commands on a store) still records
    /// every decision but starts no step: a running plan's ready steps start when an engine that
    /// runs attempts recovers the plan.
    pub execute: bool,
    /// A paused or idle plan with nothing to do is unloaded from memory after this long (it is
    /// loaded again from the store when needed); an ended plan is unloaded at once.
    pub idle_unload_ms: u64,
    /// Where agent types without a local executor go (remote workers); `None`: they fail.
    pub remote: Option<crate::remote::RemoteQueue>,
    /// Where the engine reads the time: every recorded timestamp, lease and deadline (a retry's
    /// backoff, `resume_at`). The system clock by default; tests on paused tokio time pass a
    /// [`crate::clock::TokioClock`].
    pub clock: Arc<dyn Clock>,
    /// The other nodes sharing the store, for commands about plans they own (`None`: a single
    /// node, which never forwards).
    pub peers: Option<Arc<dyn crate::cluster::Peers>>,
    /// Where other nodes reach this one (`http://host:port`), recorded with its heartbeats.
    pub advertise: Option<String>,
    /// The most commands (and reads of a live plan's state) waiting at once to be decided, over
    /// all plans: one more command is refused at once with [`EngineError::Overloaded`] (HTTP
    /// 429), and one more read is served from the store, so a flood of requests never grows the
    /// actors' mailboxes without bound. Outcomes of attempts are never refused: they are
    /// bounded by the attempts running.
    pub max_queued_commands: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            node_id: "local".into(),
            lease_ms: 30_000,
            snapshot_every: 256,
            stream_buffer: 16_384,
            recover: true,
            execute: true,
            idle_unload_ms: 2_000,
            remote: None,
            clock: Arc::new(SystemClock),
            peers: None,
            advertise: None,
            max_queued_commands: DEFAULT_MAX_QUEUED_COMMANDS,
        }
    }
}

/// [`EngineOptions::max_queued_commands`] by default.
pub const DEFAULT_MAX_QUEUED_COMMANDS: usize = 10_000;

/// How long a caller refused with [`EngineError::Overloaded`] is told to wait.
const OVERLOADED_RETRY_MS: u64 = 1_000;

/// The live actors, one per plan at most. `unloads` counts removals and `recent` remembers the
/// latest of them (count, plan): a load of a plan that began before that plan's actor was
/// removed may have read the log before the removed actor's last commit, so it is redone.
/// Removals of other plans do not matter, so a busy engine (thousands of plans ending) does not
/// make every load start over.
#[derive(Default)]
struct Plans {
    live: HashMap<String, Live>,
    /// Plans whose actor has left and is giving up the lease. A load waits for that: claimed
    /// before the release lands, the lease would be renewed under the same fence and then
    /// released under the new actor, which could then write nothing.
    releasing: std::collections::HashSet<String>,
    unloads: u64,
    recent: std::collections::VecDeque<(u64, String)>,
    /// Plans registered here lately and not loaded since, with when it stops being kept, their
    /// state and the id of their first event (see [`Plans::keep_fresh`]), oldest first.
    /// Boxed states (as every state held across a wait in `deliver`): a future holds its
    /// values inline, and a `PlanState` is 560 bytes.
    fresh: HashMap<String, (tokio::time::Instant, Box<PlanState>, u64)>,
    fresh_order: std::collections::VecDeque<(tokio::time::Instant, String)>,
    /// A task forgets the kept states as their time runs out (see [`sweep_fresh`]).
    sweeping: bool,
}

/// Forgets kept registered states as their time runs out, so that they go even when nothing
/// else happens on the node; ends once none is kept.
fn sweep_fresh(inner: std::sync::Weak<Inner>, every: std::time::Duration) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(inner) = inner.upgrade() else { return };
            let Ok(mut plans) = inner.plans.lock() else {
                return;
            };
            plans.drop_stale_fresh(tokio::time::Instant::now());
            if plans.fresh.is_empty() {
                plans.sweeping = false;
                return;
            }
        }
    });
}

/// Just-registered states kept at most (see [`Plans::keep_fresh`]): memory stays bounded
/// however many plans are registered and left idle.
const FRESH_KEPT: usize = 256;

/// A live actor: its mailbox, and the token of the lease it drives its plan under (renewed for
/// it by [`crate::node::renewals`]).
pub(crate) struct Live {
    pub(crate) tx: mpsc::UnboundedSender<Msg>,
    pub(crate) token: u64,
}

/// Removals remembered for [`Plans::unloaded_since`]; a load that saw more removals than this
/// cannot tell and loads again.
const RECENT_UNLOADS: usize = 4096;

/// How often a command is delivered again when the actor it reached stopped before deciding it
/// (an unloading actor hands back what it has not decided; see [`Inner::unload_if_quiet`]).
const DELIVERIES: usize = 8;

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) registry: Registry,
    pub(crate) opts: EngineOptions,
    plans: Mutex<Plans>,
    publisher: publish::Queue,
    stream: publish::Streams,
    pub(crate) closed: std::sync::atomic::AtomicBool,
    pub(crate) counters: crate::cluster::Counters,
    /// Messages posted to actors and not yet taken (see [`Inner::post`]).
    inbox: std::sync::atomic::AtomicI64,
    /// Commands and reads admitted and not yet answered (see [`Inner::admit`]), and how many
    /// were refused for being over [`EngineOptions::max_queued_commands`].
    queued: std::sync::atomic::AtomicUsize,
    overloaded: std::sync::atomic::AtomicU64,
    /// Woken when an unloaded actor's lease release has landed (see [`Plans::releasing`]).
    released: tokio::sync::Notify,
    /// Woken when an actor starts: the lease renewal rests while no plan is live.
    pub(crate) actor_started: Arc<tokio::sync::Notify>,
    /// The last checkpoint states read.
    folds: crate::folds::Folds,
    /// Store snapshots being written (see `PlanActor::maybe_snapshot`): a shutdown waits for
    /// them, so a store closed after it holds every snapshot its plans' published events were
    /// due.
    pub(crate) snapshot_writes: tokio_util::task::TaskTracker,
}

impl Inner {
    /// Now, by the engine's clock.
    pub(crate) fn now(&self) -> Timestamp {
        self.opts.clock.now()
    }

    pub(crate) fn publish(&self, events: Vec<Arc<Event>>) {
        self.publisher.push(events);
    }

    /// Hands a message to an actor's mailbox, counting it until the actor takes it
    /// ([`Inner::took_msg`]). A closed mailbox hands the message back, to be delivered again
    /// (unboxed: most messages are sent, and boxing would cost each one an allocation).
    #[allow(clippy::result_large_err)]
    pub(crate) fn post(
        &self,
        tx: &mpsc::UnboundedSender<Msg>,
        msg: Msg,
    ) -> Result<(), mpsc::error::SendError<Msg>> {
        use std::sync::atomic::Ordering::Relaxed;
        self.inbox.fetch_add(1, Relaxed);
        tx.send(msg).inspect_err(|_| {
            self.inbox.fetch_sub(1, Relaxed);
        })
    }

    /// Admits one more command (or read of a live plan) until the guard is dropped, once it is
    /// answered; refuses it when [`EngineOptions::max_queued_commands`] are waiting already.
    pub(crate) fn admit(&self) -> Result<Admitted<'_>, EngineError> {
        self.try_admit().ok_or_else(|| {
            self.overloaded
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            EngineError::Overloaded {
                limit: self.opts.max_queued_commands,
                retry_after_ms: OVERLOADED_RETRY_MS,
            }
        })
    }

    /// Like [`Inner::admit`], for a read, which is served otherwise when over the limit:
    /// `None` then, and nothing is counted as refused.
    pub(crate) fn try_admit(&self) -> Option<Admitted<'_>> {
        use std::sync::atomic::Ordering::{AcqRel, Relaxed};
        let limit = self.opts.max_queued_commands;
        self.queued
            .fetch_update(AcqRel, Relaxed, |n| (n < limit).then_some(n + 1))
            .ok()
            .map(|_| Admitted(&self.queued))
    }

    /// An actor took a message out of its mailbox (or dropped it with the mailbox).
    pub(crate) fn took_msg(&self) {
        self.inbox
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Does this engine share its store with other nodes (or talk to other nodes)?
    pub(crate) fn clustered(&self) -> bool {
        self.opts.peers.is_some() || self.store.commit_hint().is_some()
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn executor_for(&self, agent_type: &str) -> Option<Arc<dyn Executor>> {
        self.registry.get(agent_type).or_else(|| {
            let q = self.opts.remote.as_ref()?;
            Some(Arc::new(crate::remote::QueueExecutor::new(q)) as Arc<dyn Executor>)
        })
    }

    /// Removes the plan's actor from the map if `tx` is still the registered one. True when this
    /// call removed it (the actor may then stop).
    pub(crate) fn unload(&self, plan_id: &str, tx: &mpsc::UnboundedSender<Msg>) -> bool {
        let Ok(mut plans) = self.plans.lock() else {
            return false;
        };
        plans.remove_if(plan_id, tx)
    }

    /// Like [`Inner::unload`], but only while nothing waits in the actor's mailbox, and the
    /// mailbox is closed before the registry lock is let go. A command sent through a copy of
    /// the sender taken just before then fails to send or stays queued; the actor drops what
    /// stayed queued without deciding it, and [`Engine::send`] delivers it again to the next
    /// actor. So one plan never has two actors deciding at the same time.
    pub(crate) fn unload_if_quiet(
        &self,
        plan_id: &str,
        tx: &mpsc::UnboundedSender<Msg>,
        rx: &mut mpsc::UnboundedReceiver<Msg>,
    ) -> bool {
        let Ok(mut plans) = self.plans.lock() else {
            return false;
        };
        if !rx.is_empty() || !plans.remove_if(plan_id, tx) {
            return false;
        }
        plans.releasing.insert(plan_id.to_owned());
        rx.close();
        true
    }

    /// The lease of a plan unloaded by [`Inner::unload_if_quiet`] is released (or its release
    /// failed): the plan may be loaded again.
    pub(crate) fn release_done(&self, plan_id: &str) {
        if let Ok(mut plans) = self.plans.lock() {
            plans.releasing.remove(plan_id);
        }
        self.released.notify_waiters();
    }

    fn live(&self, plan_id: &str) -> Option<mpsc::UnboundedSender<Msg>> {
        self.plans
            .lock()
            .ok()?
            .live
            .get(plan_id)
            .map(|l| l.tx.clone())
    }

    /// Every live actor's plan, lease token and mailbox, for the lease renewal.
    pub(crate) fn live_leases(&self) -> Vec<(String, u64, mpsc::UnboundedSender<Msg>)> {
        self.plans.lock().map_or_else(
            |_| Vec::new(),
            |p| {
                p.live
                    .iter()
                    .map(|(id, l)| (id.clone(), l.token, l.tx.clone()))
                    .collect()
            },
        )
    }
}

/// A command admitted by [`Inner::admit`], counted until it is answered.
pub(crate) struct Admitted<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Plans {
    /// Keeps the state of a plan just registered on this node for `keep`, with the id of the
    /// registration's first event (the plan's incarnation: see `Leases::claim_incarnation`),
    /// so that a start soon after does not read the plan back from the store. Kept only if no
    /// actor of the plan was live or removed since the registration began (removal count
    /// `since`): then nothing but the registration wrote the plan's log through this node.
    fn keep_fresh(
        &mut self,
        plan_id: &str,
        state: PlanState,
        first_event: u64,
        since: u64,
        keep: std::time::Duration,
    ) {
        let now = tokio::time::Instant::now();
        self.drop_stale_fresh(now);
        if keep.is_zero() || self.live.contains_key(plan_id) || self.unloaded_since(plan_id, since)
        {
            return;
        }
        while self.fresh.len() >= FRESH_KEPT {
            match self.fresh_order.pop_front() {
                Some((_, id)) => {
                    self.fresh.remove(&id);
                }
                None => break,
            }
        }
        let until = now + keep;
        self.fresh
            .insert(plan_id.to_owned(), (until, Box::new(state), first_event));
        self.fresh_order.push_back((until, plan_id.to_owned()));
    }

    /// Forgets the kept states whose time is up.
    fn drop_stale_fresh(&mut self, now: tokio::time::Instant) {
        while let Some((until, _)) = self.fresh_order.front() {
            if *until > now && self.fresh_order.len() <= 2 * FRESH_KEPT {
                break;
            }
            let (until, id) = self.fresh_order.pop_front().expect("front");
            // The map's entry may be a newer one under the same id (deleted, registered again).
            if self.fresh.get(&id).is_some_and(|(u, _, _)| *u == until) {
                self.fresh.remove(&id);
            }
        }
    }

    /// The kept state of `plan_id` and its first event's id, if any (and forgotten here
    /// either way).
    fn take_fresh(&mut self, plan_id: &str) -> Option<(Box<PlanState>, u64)> {
        let now = tokio::time::Instant::now();
        self.drop_stale_fresh(now);
        self.fresh
            .remove(plan_id)
            .filter(|(until, _, _)| *until > now)
            .map(|(_, state, first)| (state, first))
    }

    fn remove_if(&mut self, plan_id: &str, tx: &mpsc::UnboundedSender<Msg>) -> bool {
        match self.live.get(plan_id) {
            Some(current) if current.tx.same_channel(tx) => {
                self.live.remove(plan_id);
                self.note_unload(plan_id);
                true
            }
            _ => false,
        }
    }

    fn note_unload(&mut self, plan_id: &str) {
        self.unloads += 1;
        if self.recent.len() == RECENT_UNLOADS {
            self.recent.pop_front();
        }
        self.recent.push_back((self.unloads, plan_id.to_owned()));
    }

    /// Was `plan_id`'s actor removed after the removal count was `since`? True as well when
    /// too many removals happened since to tell.
    fn unloaded_since(&self, plan_id: &str, since: u64) -> bool {
        if self.unloads == since {
            return false;
        }
        if self.unloads - since > self.recent.len() as u64 {
            return true;
        }
        self.recent
            .iter()
            .rev()
            .take_while(|(n, _)| *n > since)
            .any(|(_, p)| p == plan_id)
    }
}

/// Loads a plan's state: the newest snapshot plus the events after it.
pub(crate) async fn load_state(
    store: &dyn Store,
    plan_id: &str,
) -> Result<(PlanState, u64), EngineError> {
    state_at(store, plan_id, u64::MAX).await
}

/// The state of a plan right after event `seq` (the whole log for `u64::MAX`), and the seq of
/// the snapshot it started from.
pub(crate) async fn state_at(
    store: &dyn Store,
    plan_id: &str,
    seq: u64,
) -> Result<(PlanState, u64), EngineError> {
    let (mut state, from) = match store.get_snapshot(plan_id, seq).await? {
        Some((s, bytes)) => match crate::snapshot::decode(&bytes) {
            Ok(state) if state.seq == s => (state, s),
            _ => (PlanState::empty(plan_id), 0),
        },
        None => (PlanState::empty(plan_id), 0),
    };
    let snapshot_seq = from;
    let mut after = from;
    loop {
        let until = if seq == u64::MAX { None } else { Some(seq) };
        let rows = store.read_events(plan_id, after, until, 4_096).await?;
        let n = rows.len();
        for row in rows {
            let e = from_stored(row)?;
            after = e.seq;
            state.apply(&e);
        }
        if n < 4_096 {
            break;
        }
    }
    if state.seq == 0 {
        return Err(EngineError::PlanNotFound(plan_id.to_owned()));
    }
    Ok((state, snapshot_seq))
}

/// The error for a version a plan never had, listing the ones it has (`1-3, 5`).
fn no_version(plan_id: &str, version: u64, known: &[PlanVersion]) -> EngineError {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for v in known {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == v.version => *end = v.version,
            _ => ranges.push((v.version, v.version)),
        }
    }
    let known = ranges
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    EngineError::VersionNotFound {
        plan_id: plan_id.to_owned(),
        version,
        known,
    }
}

/// The file format of an exported checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointExport {
    /// Always `cairn.checkpoint.v1`.
    pub format: String,
    pub checkpoint: CheckpointView,
    pub state: cairn_core::Materialized,
}

const EXPORT_FORMAT: &str = "cairn.checkpoint.v1";

/// The durable orchestrator, embedded. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Opens an engine over a store and resumes every plan that was running or paused.
    pub async fn open(
        store: Arc<dyn Store>,
        registry: Registry,
        opts: EngineOptions,
    ) -> Result<Engine, EngineError> {
        let first_id = store.last_event_id().await? + 1;
        let clustered = opts.peers.is_some() || store.commit_hint().is_some();
        // A node sharing its store tails the log for the other nodes' events.
        let tail = clustered.then(|| publish::Tail {
            hint: store.commit_hint(),
            every: publish::TAIL_EVERY,
        });
        let (publisher, stream) = publish::spawn(store.clone(), first_id, opts.stream_buffer, tail);
        let started_at = opts.clock.now().as_micros();
        store
            .heartbeat(&opts.node_id, opts.advertise.as_deref(), started_at)
            .await?;
        let engine = Engine {
            inner: Arc::new(Inner {
                store,
                registry,
                opts,
                plans: Mutex::new(Plans::default()),
                publisher,
                stream,
                closed: std::sync::atomic::AtomicBool::new(false),
                counters: Default::default(),
                inbox: Default::default(),
                queued: Default::default(),
                overloaded: Default::default(),
                released: tokio::sync::Notify::new(),
                actor_started: Arc::new(tokio::sync::Notify::new()),
                folds: Default::default(),
                snapshot_writes: tokio_util::task::TaskTracker::new(),
            }),
        };
        // A single node's one heartbeat says when it started; the nodes of a cluster keep
        // theirs fresh. (No timer runs otherwise: a lone engine on paused tokio time sees
        // time pass only for its plans.)
        if clustered {
            tokio::spawn(crate::node::heartbeats(
                Arc::downgrade(&engine.inner),
                started_at,
            ));
        }
        // One renewal of every live plan's lease per third of a lease period.
        tokio::spawn(crate::node::renewals(Arc::downgrade(&engine.inner)));
        // Remote workers' results reach plans through this engine; expired claims fail their
        // attempts.
        if let Some(remote) = &engine.inner.opts.remote {
            remote.attach(Arc::downgrade(&engine.inner));
            tokio::spawn(crate::remote::sweep(remote.clone()));
        }
        if engine.inner.opts.recover {
            engine.recover().await?;
            // Plans of nodes that stop renewing their leases are taken over here.
            if clustered && engine.inner.opts.execute {
                tokio::spawn(crate::node::take_overs(Arc::downgrade(&engine.inner)));
            }
        }
        Ok(engine)
    }

    /// Resumes driving every running plan (and loads paused ones so their timers run).
    async fn recover(&self) -> Result<(), EngineError> {
        let ids = self
            .inner
            .store
            .plans_in_states(&cairn_core::PlanStatus::active_names())
            .await?;
        for id in ids {
            match self.recover_plan(&id).await {
                Ok(()) | Err(EngineError::NotOwner { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Takes one plan over after a restart: attempts that were running run again (same attempt,
    /// same idempotency key) if the plan is running, or go back to pending if it is not.
    /// A plan another node drives is left to it (`NotOwner`): recovery is never forwarded.
    pub async fn recover_plan(&self, plan_id: &str) -> Result<(), EngineError> {
        match self
            .send_here(plan_id, Box::new(Command::Recover), SYSTEM_ACTOR.to_owned())
            .await
        {
            Ok(_) | Err(EngineError::Refused { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Engine {
        Engine { inner }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// What this node does for the cluster (for metrics).
    pub fn node_stats(&self) -> crate::cluster::NodeStats {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.inner.counters;
        crate::cluster::NodeStats {
            leases_held: self
                .inner
                .plans
                .lock()
                .map(|p| p.live.len() as u64)
                .unwrap_or(0),
            takeovers_total: c.takeovers.load(Relaxed),
            forwarded_total: c.forwarded.load(Relaxed),
            forward_failures_total: c.forward_failures.load(Relaxed),
            inbox_depth: self.inner.inbox.load(Relaxed).max(0) as u64,
            commands_queued: self.inner.queued.load(Relaxed) as u64,
            overloaded_total: self.inner.overloaded.load(Relaxed),
            plan_loads_total: c.loads.load(Relaxed),
        }
    }

    /// Starts driving a plan this node just took over with `fence` (its previous owner stopped
    /// renewing the lease): loads it and recovers it as after a restart, so the attempts that
    /// were running there run again here (same attempt, same idempotency key).
    pub(crate) async fn adopt(
        &self,
        plan_id: &str,
        fence: cairn_store::Fence,
    ) -> Result<(), EngineError> {
        let (state, snapshot_seq) = load_state(&*self.inner.store, plan_id).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (reply, _) = oneshot::channel();
        let recover = Msg::Command {
            command: Box::new(Command::Recover),
            actor: SYSTEM_ACTOR.to_owned(),
            reply,
        };
        let _ = self.inner.post(&tx, recover);
        let old = {
            let mut plans = self
                .inner
                .plans
                .lock()
                .map_err(|_| EngineError::ShuttingDown)?;
            plans.fresh.remove(plan_id);
            let old = plans.live.insert(
                plan_id.to_owned(),
                Live {
                    tx: tx.clone(),
                    token: fence.token,
                },
            );
            if old.is_some() {
                plans.note_unload(plan_id);
            }
            old
        };
        // An actor of this node whose lease ran out (it could not renew in time) is fenced
        // now: it stops, and the new one drives the plan.
        if let Some(old) = old {
            let _ = self.inner.post(&old.tx, Msg::Stop);
        }
        let actor = PlanActor::new(self.inner.clone(), state, fence, snapshot_seq, rx, tx);
        tokio::spawn(actor.run());
        self.inner.actor_started.notify_one();
        crate::cluster::Counters::bump(&self.inner.counters.takeovers);
        Ok(())
    }

    /// Drives a plan this node has just created already started (its registration and start
    /// committed together, see [`Engine::register_and_start`]): spawns its actor, which carries
    /// out `actions` first. Answers false, spawning nothing, when an actor of the plan was
    /// loaded meanwhile (a read raced the creation): that one drives it.
    pub(crate) fn drive_new(
        &self,
        state: PlanState,
        fence: cairn_store::Fence,
        actions: Vec<cairn_core::Action>,
    ) -> Result<bool, EngineError> {
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut plans = self
                .inner
                .plans
                .lock()
                .map_err(|_| EngineError::ShuttingDown)?;
            if plans.live.contains_key(&state.plan_id) {
                return Ok(false);
            }
            plans.fresh.remove(&state.plan_id);
            plans.live.insert(
                state.plan_id.clone(),
                Live {
                    tx: tx.clone(),
                    token: fence.token,
                },
            );
        }
        let actor =
            PlanActor::new(self.inner.clone(), state, fence, 0, rx, tx).with_actions(actions);
        tokio::spawn(actor.run());
        self.inner.actor_started.notify_one();
        Ok(true)
    }

    /// Reports the result of attempt `attempt` of a step that ran outside the engine (a remote
    /// worker's report, taken by any front end): it goes to the plan's actor like any
    /// executor's result, loading the plan if need be, and this answers once it is committed.
    /// A result for an attempt the plan no longer counts is recorded as ignored.
    pub async fn report_outcome(
        &self,
        plan_id: &str,
        step_id: &str,
        attempt: u32,
        result: cairn_core::StepResult,
    ) -> Result<(), EngineError> {
        let (ack, recorded) = oneshot::channel();
        self.deliver_outcome(
            plan_id,
            cairn_core::AttemptId::step(step_id, attempt),
            result,
            Some(ack),
        )
        .await?;
        match recorded.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(EngineError::StorageUnavailable(reason)),
            Err(_) => Err(EngineError::PlanNotFound(plan_id.to_owned())),
        }
    }

    /// Hands an attempt's result to the plan's actor; `ack` hears when it is committed.
    pub(crate) async fn deliver_outcome(
        &self,
        plan_id: &str,
        attempt: cairn_core::AttemptId,
        result: cairn_core::StepResult,
        ack: Option<crate::remote::Ack>,
    ) -> Result<(), EngineError> {
        let Some(peers) = self.inner.opts.peers.clone() else {
            let msg = Msg::Outcome {
                attempt,
                result: Box::new(result),
                ack,
            };
            return self.deliver(plan_id, msg).await;
        };
        // In a cluster the outcome may have to travel to the plan's owner, so the caller's
        // ack is kept here and answered from this node's own one.
        let (mine, recorded) = oneshot::channel();
        let msg = Msg::Outcome {
            attempt: attempt.clone(),
            result: Box::new(result.clone()),
            ack: Some(mine),
        };
        match self.deliver(plan_id, msg).await {
            Ok(()) => {
                if let Some(ack) = ack {
                    tokio::spawn(async move {
                        if let Ok(answer) = recorded.await {
                            let _ = ack.send(answer);
                        }
                    });
                }
                Ok(())
            }
            Err(EngineError::NotOwner { owner, .. }) => {
                let request = Request::Outcome {
                    plan_id: plan_id.to_owned(),
                    attempt,
                    result: Box::new(result),
                    wait: ack.is_some(),
                };
                let reply = crate::node::forward(self, &*peers, request, owner).await?;
                if let Some(ack) = ack {
                    match reply {
                        Reply::Recorded => {
                            let _ = ack.send(Ok(()));
                        }
                        Reply::NotRecorded { reason } => {
                            let _ = ack.send(Err(reason));
                        }
                        Reply::Dropped => {}
                        other => {
                            let _ = ack.send(Err(unexpected(other).to_string()));
                        }
                    }
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Hands a message to a plan's actor, loading the plan from the store if it has none. A
    /// freshly loaded actor gets the message before it starts, so it cannot unload first.
    async fn deliver(&self, plan_id: &str, mut msg: Msg) -> Result<(), EngineError> {
        let mut reloads = 0;
        let mut release_since: Option<tokio::time::Instant> = None;
        // After a few loads that raced an unload, the last one, kept for the next claim.
        let mut kept_load: Option<(Box<PlanState>, u64)> = None;
        loop {
            if self.inner.is_closed() {
                return Err(EngineError::ShuttingDown);
            }
            // Made before looking, so a release that lands meanwhile still wakes it.
            let released = self.inner.released.notified();
            let (found, unloads, releasing) = {
                let plans = self
                    .inner
                    .plans
                    .lock()
                    .map_err(|_| EngineError::ShuttingDown)?;
                (
                    plans.live.get(plan_id).map(|l| l.tx.clone()),
                    plans.unloads,
                    plans.releasing.contains(plan_id),
                )
            };
            if let Some(tx) = found {
                match self.inner.post(&tx, msg) {
                    Ok(()) => return Ok(()),
                    Err(mpsc::error::SendError(back)) => {
                        msg = back;
                        self.inner.unload(plan_id, &tx);
                        continue;
                    }
                }
            }
            // Still within the wait for a release, counted from the first time one was seen.
            let release_wait = std::time::Duration::from_millis(self.inner.opts.lease_ms.max(1));
            let mut still_waiting = || {
                release_since
                    .get_or_insert_with(tokio::time::Instant::now)
                    .elapsed()
                    < release_wait
            };
            if found.is_none() && releasing && still_waiting() {
                // The plan's last actor is giving its lease up: claim after that lands (its
                // release is bounded by a lease; each wait too, should a wake-up be missed).
                let _ = tokio::time::timeout(std::time::Duration::from_millis(100), released).await;
                continue;
            }
            // Taken before the claim: a claim that fails leaves a load to the next try.
            let kept = self
                .inner
                .plans
                .lock()
                .map_err(|_| EngineError::ShuttingDown)?
                .take_fresh(plan_id);
            let (node, ttl, now) = (
                &self.inner.opts.node_id,
                self.inner.opts.lease_ms,
                self.inner.now().as_micros(),
            );
            let (fence, incarnation) = if kept.is_some() {
                self.inner
                    .store
                    .claim_incarnation(plan_id, node, ttl, now)
                    .await?
            } else {
                (self.inner.store.claim(plan_id, node, ttl, now).await?, None)
            };
            // A plan registered here moments ago starts from the state its registration
            // decided, if the plan claimed is the one registered (the same first event: one
            // deleted and registered again, on any node, has another) and no node held its
            // lease since (the first claim is this one: token 1). Another node may still have
            // written the plan meanwhile without its lease; then the actor's first append
            // meets a seq conflict and reloads, as any stale actor does.
            let fresh = kept
                .filter(|(_, first)| {
                    incarnation == Some(*first) && fence.token == 1 && fence.node == *node
                })
                .map(|(state, _)| state);
            let (state, snapshot_seq) = match (fresh, kept_load.take()) {
                (Some(state), _) => (state, 0),
                (None, Some(load)) => load,
                (None, None) => {
                    crate::cluster::Counters::bump(&self.inner.counters.loads);
                    // Boxed: a load's future is large, and only this turn of the loop needs it.
                    let (state, seq) = Box::pin(load_state(&*self.inner.store, plan_id)).await?;
                    (Box::new(state), seq)
                }
            };
            let mut plans = self
                .inner
                .plans
                .lock()
                .map_err(|_| EngineError::ShuttingDown)?;
            // Another caller may have loaded it meanwhile: use that actor. If this plan's actor
            // left after this caller looked, it may have committed after this load read the
            // log, and its lease release (this node's token, which this node's claim renews)
            // may have expired the claim just made: claim and load again. Should that keep
            // happening, the load is kept after a few tries and only the claim is made again;
            // an actor that starts stale meets a seq conflict on its first append, reloads and
            // decides again (see the actor's commit). A claim is never used across an unload,
            // nor while an earlier actor's release is still to land (waited for as above).
            if plans.live.contains_key(plan_id) {
                continue;
            }
            let release_pending = plans.releasing.contains(plan_id) && still_waiting();
            if plans.unloaded_since(plan_id, unloads) || release_pending {
                reloads += 1;
                if reloads >= 16 {
                    kept_load = Some((state, snapshot_seq));
                }
                continue;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            // In a cluster, a plan loaded with attempts in flight was driven by a node that
            // stopped (its lease ran out): they run again here, as after a restart.
            let recovering = matches!(
                &msg,
                Msg::Command { command, .. } if matches!(**command, Command::Recover)
            );
            if self.inner.clustered() && !recovering && !state.live_attempts().is_empty() {
                let (reply, _) = oneshot::channel();
                let recover = Msg::Command {
                    command: Box::new(Command::Recover),
                    actor: SYSTEM_ACTOR.to_owned(),
                    reply,
                };
                let _ = self.inner.post(&tx, recover);
            }
            let _ = self.inner.post(&tx, msg);
            plans.fresh.remove(plan_id);
            plans.live.insert(
                plan_id.to_owned(),
                Live {
                    tx: tx.clone(),
                    token: fence.token,
                },
            );
            drop(plans);
            let actor = PlanActor::new(self.inner.clone(), *state, fence, snapshot_seq, rx, tx);
            tokio::spawn(actor.run());
            self.inner.actor_started.notify_one();
            return Ok(());
        }
    }

    /// Sends a command to its plan and waits for the committed answer: to this node's actor,
    /// or, when another node drives the plan, to that node (see [`crate::cluster`]).
    ///
    /// Not an `async fn`: the command is boxed before the future is made, so the future that
    /// waits (held by every caller's) does not keep an argument of 264 bytes besides it.
    fn send<'a>(
        &'a self,
        plan_id: &str,
        command: Command,
        actor: String,
    ) -> impl std::future::Future<Output = Result<Done, EngineError>> + Send + 'a {
        let request = Request::Command {
            plan_id: plan_id.to_owned(),
            command: Box::new(command),
            actor,
        };
        async move {
            match self.dispatch(request).await? {
                Reply::Done {
                    state,
                    intervention,
                    refusal,
                    checkpoint,
                } => Ok(Done {
                    state,
                    intervention: intervention.map(|i| *i),
                    refusal,
                    checkpoint,
                }),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Carries a request out: here, or at the node that drives its plan when that is another
    /// one and this engine has peers.
    async fn dispatch(&self, request: Request) -> Result<Reply, EngineError> {
        let Some(peers) = self.inner.opts.peers.clone() else {
            return self.carry_here(request).await;
        };
        match self.carry_here(request.clone()).await {
            // Boxed: the forward's future (an HTTP exchange) is large, and only a cluster's
            // requests for another node's plans need it.
            Err(EngineError::NotOwner { owner, .. }) => {
                Box::pin(crate::node::forward(self, &*peers, request, owner)).await
            }
            other => other,
        }
    }

    /// Carries a request out on this node: `NotOwner` when another node drives the plan.
    pub(crate) async fn carry_here(&self, request: Request) -> Result<Reply, EngineError> {
        match request {
            Request::Command {
                plan_id,
                command,
                actor,
            } => {
                let answer = self.send_here(&plan_id, command, actor).await?;
                Ok(Reply::Done {
                    checkpoint: answer
                        .events
                        .iter()
                        .find(|e| e.checkpoint.is_some())
                        .map(|e| summary_of(e)),
                    state: answer.state,
                    intervention: answer.intervention.map(Box::new),
                    refusal: answer.refusal,
                })
            }
            Request::Outcome {
                plan_id,
                attempt,
                result,
                wait,
            } => {
                let (ack, recorded) = oneshot::channel();
                let msg = Msg::Outcome {
                    attempt,
                    result,
                    ack: Some(ack),
                };
                Box::pin(self.deliver(&plan_id, msg)).await?;
                if !wait {
                    return Ok(Reply::Recorded);
                }
                Ok(match recorded.await {
                    Ok(Ok(())) => Reply::Recorded,
                    Ok(Err(reason)) => Reply::NotRecorded { reason },
                    Err(_) => Reply::Dropped,
                })
            }
            // Boxed, as a delivery is: rare, and their futures would otherwise size every
            // request's.
            Request::Fork { plan_id, fork } => Ok(Reply::Forked {
                state: Box::new(Box::pin(self.fork_here(&plan_id, *fork)).await?),
            }),
            Request::Delete { plan_id } => {
                Box::pin(self.delete_here(&plan_id)).await?;
                Ok(Reply::Deleted)
            }
        }
    }

    /// Sends a command to this node's actor of the plan and waits for the committed answer.
    async fn send_here(
        &self,
        plan_id: &str,
        command: Box<Command>,
        actor: String,
    ) -> Result<Answer, EngineError> {
        // Counted until answered: a flood of commands is refused here, before any mailbox.
        let _admitted = self.inner.admit()?;
        // An actor that stops before deciding a command drops its reply: deliver it again (to a
        // freshly loaded actor if need be).
        for _ in 0..DELIVERIES {
            let (reply, rx) = oneshot::channel();
            // Boxed for as long as it runs (a load of the plan, a claim): the caller then waits
            // for its answer holding only this loop's state, not the delivery's.
            Box::pin(self.deliver(
                plan_id,
                Msg::Command {
                    command: command.clone(),
                    actor: actor.clone(),
                    reply,
                },
            ))
            .await?;
            if let Ok(answer) = rx.await {
                return answer;
            }
        }
        Err(EngineError::ShuttingDown)
    }

    /// Answers a forwarding request another node's engine made (see [`crate::cluster`]) for a
    /// plan this node owns: carries it out and answers the result as the requester reads it.
    /// Carried out only if this node drives the plan or can claim it; otherwise the answer
    /// says which node does, and the requester asks there. Never forwards further itself.
    pub async fn serve_forwarded(&self, request: &[u8]) -> Vec<u8> {
        let reply = match Request::decode(request) {
            Ok(request) => Reply::of(self.carry_here(request).await),
            Err(message) => Reply::Error {
                error: crate::cluster::WireError::Store { message },
            },
        };
        reply.encode()
    }

    /// Registers a plan (validated again here). A missing `plan_id` gets a UUIDv7.
    pub async fn register(&self, mut plan: Plan, actor: &str) -> Result<PlanState, EngineError> {
        plan.validate()?;
        let plan_id = plan
            .plan_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        plan.plan_id = Some(plan_id.clone());
        // Kept a little while (as long as a quiet plan's actor stays), with its first event's
        // id: a start soon after then spares reading the plan back, when its claim shows the
        // same plan (see `deliver`; on a shared store another node may have deleted it and
        // registered a new one under the same id meanwhile, whose first event is another).
        let since = self
            .inner
            .plans
            .lock()
            .map_err(|_| EngineError::ShuttingDown)?
            .unloads;
        let (state, events) = self
            .create_quietly(plan_id.clone(), plan, None, actor)
            .await?;
        let first_event = events.first().map(|e| e.id);
        self.inner.publish(events);
        if let (Some(first_event), Ok(mut plans)) = (first_event, self.inner.plans.lock()) {
            let keep = std::time::Duration::from_millis(self.inner.opts.idle_unload_ms);
            plans.keep_fresh(&plan_id, state.clone(), first_event, since, keep);
            if !plans.sweeping && !plans.fresh.is_empty() {
                plans.sweeping = true;
                sweep_fresh(Arc::downgrade(&self.inner), keep);
            }
        }
        Ok(state)
    }

    async fn create(
        &self,
        plan_id: String,
        definition: Plan,
        origin: Option<Box<Origin>>,
        actor: &str,
    ) -> Result<PlanState, EngineError> {
        let (state, events) = self
            .create_quietly(plan_id, definition, origin, actor)
            .await?;
        self.inner.publish(events);
        Ok(state)
    }

    /// Stores a new plan and returns its events without publishing them (the caller does, once
    /// the plan is sure to stay).
    async fn create_quietly(
        &self,
        plan_id: String,
        definition: Plan,
        origin: Option<Box<Origin>>,
        actor: &str,
    ) -> Result<(PlanState, Vec<Arc<Event>>), EngineError> {
        let mut state = PlanState::empty(&plan_id);
        let now = self.inner.now();
        let decision = cairn_core::handle(
            &mut state,
            Command::Register { definition, origin },
            cairn_core::Ctx { now, actor },
        )?;
        let stored = self
            .inner
            .store
            .create_plan(CreatePlan {
                plan_id: plan_id.clone(),
                created_at: now.as_micros(),
                state: state.status.as_str().to_owned(),
                events: decision.events.iter().map(to_new).collect(),
                reviews: crate::reviews::all(&state),
            })
            .await?;
        let events: Vec<Arc<Event>> = decision
            .events
            .into_iter()
            .zip(stored)
            .map(|(mut e, s)| {
                e.id = s.id;
                Arc::new(e)
            })
            .collect();
        Ok((state, events))
    }

    /// Starts an idle plan (a `Conflict` refusal otherwise); answers with the state once the
    /// `plan_started` event and the first steps' starts are durable.
    pub async fn start(
        &self,
        plan_id: &str,
        actor: &str,
        reason: Option<String>,
    ) -> Result<Arc<PlanState>, EngineError> {
        Ok(self
            .send(plan_id, Command::Start { reason }, actor.into())
            .await?
            .state)
    }

    /// Records that the remote worker `worker_id` took a queued attempt: the step is `running`
    /// from then on. Refused (a conflict) when that attempt is no longer waiting for a worker.
    pub async fn claim(
        &self,
        plan_id: &str,
        step_id: &str,
        attempt: u32,
        worker_id: &str,
        actor: &str,
    ) -> Result<Arc<PlanState>, EngineError> {
        Ok(self
            .send(
                plan_id,
                Command::Claim {
                    attempt: cairn_core::AttemptId::step(step_id, attempt),
                    worker_id: worker_id.to_owned(),
                },
                actor.into(),
            )
            .await?
            .state)
    }

    /// Pauses a running plan: durable before it answers; no step starts after it. `Boundary`
    /// lets running steps finish (`plan_drained` follows); `Immediate` interrupts them. With
    /// `resume_at` (µs since the epoch) the plan resumes by itself then.
    pub async fn pause(
        &self,
        plan_id: &str,
        mode: PauseMode,
        resume_at: Option<Micros>,
        actor: &str,
        reason: Option<String>,
    ) -> Result<Arc<PlanState>, EngineError> {
        Ok(self
            .send(
                plan_id,
                Command::Pause {
                    mode,
                    resume_at,
                    reason,
                },
                actor.into(),
            )
            .await?
            .state)
    }

    /// Stops the steps still running of a plan that is not running (paused, or failed with steps
    /// in flight): they are recorded as interrupted, go back to pending and are told to stop;
    /// they run again when the plan continues. Refused while the plan runs (pause it first).
    pub async fn interrupt(
        &self,
        plan_id: &str,
        actor: &str,
        reason: Option<String>,
    ) -> Result<Arc<PlanState>, EngineError> {
        Ok(self
            .send(plan_id, Command::Interrupt { reason }, actor.into())
            .await?
            .state)
    }

    /// Resumes a paused plan; the next ready steps start at once.
    pub async fn resume(
        &self,
        plan_id: &str,
        actor: &str,
        reason: Option<String>,
    ) -> Result<Arc<PlanState>, EngineError> {
        Ok(self
            .send(plan_id, Command::Resume { reason }, actor.into())
            .await?
            .state)
    }

    /// Cancels an idle, running or paused plan (terminal). Running attempts are told to stop;
    /// their late results are recorded but change nothing.
    pub async fn cancel(
        &self,
        plan_id: &str,
        actor: &str,
        reason: Option<String>,
    ) -> Result<Arc<PlanState>, EngineError> {
        Ok(self
            .send(
                plan_id,
                Command::Cancel {
                    reason,
                    rollback: false,
                },
                actor.into(),
            )
            .await?
            .state)
    }

    /// Rolls back a failed or cancelled plan (or continues a rollback that failed): the plan
    /// runs again while the compensations of what it did run, one at a time, newest start
    /// first, then takes its final state. Answers the state after the rollback started and the
    /// compensations it runs, in order. With `dry_run`, answers only the order and changes
    /// nothing.
    pub async fn rollback(
        &self,
        plan_id: &str,
        actor: &str,
        dry_run: bool,
        reason: Option<String>,
    ) -> Result<(Arc<PlanState>, Vec<String>), EngineError> {
        cairn_core::decide::check_reason(reason.as_deref()).map_err(|refusal| {
            EngineError::Refused {
                refusal,
                intervention: None,
            }
        })?;
        let refused = |message: String| EngineError::Refused {
            refusal: cairn_core::Refusal::new(cairn_core::RefusalKind::Conflict, message),
            intervention: None,
        };
        if dry_run {
            let state = self.state(plan_id).await?;
            let (_, order) = cairn_core::rollback::would_run(&state).map_err(refused)?;
            return Ok((state, order));
        }
        let done = self
            .send(
                plan_id,
                Command::Rollback {
                    dry_run: false,
                    reason,
                },
                actor.into(),
            )
            .await?;
        let order = done
            .state
            .rollback
            .as_ref()
            .map(|r| r.done.iter().chain(&r.pending).cloned().collect())
            .unwrap_or_default();
        Ok((done.state, order))
    }

    /// Cancels an idle, running or paused plan and rolls back what it did: the plan runs the
    /// compensations (steps in flight are stopped first; their outcome is unknown), then ends
    /// cancelled. Answers the state and the compensations in order; with `dry_run`, only the
    /// order, changing nothing.
    pub async fn cancel_and_rollback(
        &self,
        plan_id: &str,
        actor: &str,
        dry_run: bool,
        reason: Option<String>,
    ) -> Result<(Arc<PlanState>, Vec<String>), EngineError> {
        if dry_run {
            let state = self.state(plan_id).await?;
            if state.status.is_terminal() || state.rolling_back() {
                return Err(EngineError::Refused {
                    refusal: cairn_core::Refusal::new(
                        cairn_core::RefusalKind::Conflict,
                        format!(
                            "plan {plan_id} is {}; only an idle, running or paused plan can be cancelled",
                            state.status.as_str()
                        ),
                    ),
                    intervention: None,
                });
            }
            let order = cairn_core::rollback::order(&state);
            return Ok((state, order));
        }
        let done = self
            .send(
                plan_id,
                Command::Cancel {
                    reason,
                    rollback: true,
                },
                actor.into(),
            )
            .await?;
        let order = done
            .state
            .rollback
            .as_ref()
            .map(|r| r.done.iter().chain(&r.pending).cloned().collect())
            .unwrap_or_default();
        Ok((done.state, order))
    }

    /// Applies an intervention. A refused one is recorded and returned as
    /// `EngineError::Refused` with its record.
    pub async fn intervene(
        &self,
        plan_id: &str,
        request: InterventionRequest,
        actor: &str,
    ) -> Result<Intervention, EngineError> {
        let request = self.with_upgrade_source(plan_id, request).await?;
        let decision = self
            .send(plan_id, Command::Intervene(request), actor.into())
            .await?;
        let record = decision
            .intervention
            .ok_or_else(|| EngineError::Corrupt("an intervention produced no record".into()))?;
        match decision.refusal {
            Some(refusal) => Err(EngineError::Refused {
                refusal,
                intervention: Some(Box::new(record)),
            }),
            None => Ok(record),
        }
    }

    /// Takes a manual checkpoint.
    pub async fn create_checkpoint(
        &self,
        plan_id: &str,
        label: Option<String>,
        actor: &str,
        reason: Option<String>,
    ) -> Result<CheckpointSummary, EngineError> {
        let decision = self
            .send(plan_id, Command::Checkpoint { label, reason }, actor.into())
            .await?;
        decision.checkpoint.ok_or_else(|| {
            EngineError::Corrupt("a checkpoint command produced no checkpoint".into())
        })
    }

    /// The current state of a plan.
    pub async fn state(&self, plan_id: &str) -> Result<Arc<PlanState>, EngineError> {
        // Counted like a command while it waits in the mailbox; over the limit it is read from
        // the store instead, so reads are never refused and never grow a mailbox.
        let admitted = self.inner.try_admit();
        if let Some(tx) = admitted.as_ref().and_then(|_| self.inner.live(plan_id)) {
            let (reply, rx) = oneshot::channel();
            if self.inner.post(&tx, Msg::Read { reply }).is_ok() {
                if let Ok(state) = rx.await {
                    return Ok(state);
                }
            }
        }
        Ok(Arc::new(load_state(&*self.inner.store, plan_id).await?.0))
    }

    /// The client's view of a plan (`GET /v1/plans/{id}`).
    pub async fn view(&self, plan_id: &str) -> Result<PlanView, EngineError> {
        Ok(PlanView::of(&*self.state(plan_id).await?))
    }

    /// A page of the plan index, newest first, as stored (no state is loaded).
    pub async fn list(
        &self,
        state: Option<PlanStatus>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<cairn_store::Page<PlanRow>, EngineError> {
        Ok(self
            .inner
            .store
            .list_plans(state.map(PlanStatus::as_str), limit, cursor)
            .await?)
    }

    /// A page of plans, newest first, each with its progress and times (`GET /v1/plans`).
    /// Each listed plan's state is read (from its actor, or its newest store snapshot and the
    /// events after it), so a page costs one load per plan on it, never a scan of the store.
    pub async fn plans(
        &self,
        state: Option<PlanStatus>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<PlanSummary>, EngineError> {
        self.search(state, None, limit, cursor).await
    }

    /// [`Engine::plans`], keeping only plans whose id contains `id_contains` when given.
    pub async fn search(
        &self,
        state: Option<PlanStatus>,
        id_contains: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<PlanSummary>, EngineError> {
        let page = match id_contains {
            None => self.list(state, limit, cursor).await?,
            Some(part) => {
                self.inner
                    .store
                    .search_plans(state.map(PlanStatus::as_str), part, limit, cursor)
                    .await?
            }
        };
        let mut items = Vec::with_capacity(page.items.len());
        for row in page.items {
            match self.state(&row.plan_id).await {
                Ok(st) => items.push(PlanSummary::of(&st)),
                // Deleted between the listing and the load: it is simply no longer there.
                Err(EngineError::PlanNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Page {
            items,
            next_cursor: page.next_cursor,
        })
    }

    /// Events of a plan after `after` (seq), oldest first.
    pub async fn events(
        &self,
        plan_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Event>, EngineError> {
        self.inner
            .store
            .read_events(plan_id, after, None, limit)
            .await?
            .into_iter()
            .map(from_stored)
            .collect()
    }

    /// A page of a plan's log after `after` (seq), oldest first; `next_cursor` is the seq to
    /// continue after. An unknown plan is an error, not an empty page.
    pub async fn events_page(
        &self,
        plan_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Page<Event>, EngineError> {
        let events = self.events(plan_id, after, limit.saturating_add(1)).await?;
        if events.is_empty() && self.inner.store.get_plan(plan_id).await?.is_none() {
            return Err(EngineError::PlanNotFound(plan_id.to_owned()));
        }
        Ok(Page::cut(events, limit, |e| e.seq.to_string()))
    }

    /// One step in full with every attempt from the log (`GET /v1/plans/{id}/steps/{step}`);
    /// `None` when the plan has no such step. Reads only the log's attempt events.
    pub async fn step_detail(
        &self,
        plan_id: &str,
        step_id: &str,
    ) -> Result<Option<StepDetail>, EngineError> {
        let state = self.state(plan_id).await?;
        let Some(index) = state.index_of(step_id) else {
            return Ok(None);
        };
        let only = std::collections::HashSet::from([step_id.to_owned()]);
        let mut log = self.attempt_log(plan_id, only).await?;
        Ok(Some(StepDetail::of(&state, index, log.take(step_id))))
    }

    /// The attempt spans of at most `limit` steps from position `from` in plan order (a
    /// timeline's rows); the cursor is the position to continue from. One read of the log's
    /// attempt events per page, keeping only the page's steps.
    pub async fn attempt_spans(
        &self,
        plan_id: &str,
        from: usize,
        limit: usize,
    ) -> Result<Page<StepAttempts>, EngineError> {
        let state = self.state(plan_id).await?;
        let end = from.saturating_add(limit).min(state.steps.len());
        let ids: Vec<&str> = state
            .steps
            .get(from..end)
            .unwrap_or(&[])
            .iter()
            .map(|s| s.def.step_id.as_str())
            .collect();
        let mut log = self
            .attempt_log(plan_id, ids.iter().map(|s| (*s).to_owned()).collect())
            .await?;
        let items = ids
            .iter()
            .enumerate()
            .map(|(i, id)| StepAttempts {
                step_id: (*id).to_owned(),
                index: from + i,
                attempts: log.take(id).iter().map(AttemptSpan::from).collect(),
            })
            .collect();
        Ok(Page {
            items,
            next_cursor: (end < state.steps.len()).then(|| end.to_string()),
        })
    }

    /// The attempt spans of the steps `ids` that the plan has, in plan order (a timeline of a
    /// filtered list of steps).
    pub async fn attempt_spans_of(
        &self,
        plan_id: &str,
        ids: &[String],
    ) -> Result<Vec<StepAttempts>, EngineError> {
        let state = self.state(plan_id).await?;
        let wanted: std::collections::HashSet<String> = ids.iter().cloned().collect();
        let mut log = self.attempt_log(plan_id, wanted.clone()).await?;
        Ok(state
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| wanted.contains(&s.def.step_id))
            .map(|(index, s)| StepAttempts {
                step_id: s.def.step_id.clone(),
                index,
                attempts: log
                    .take(&s.def.step_id)
                    .iter()
                    .map(AttemptSpan::from)
                    .collect(),
            })
            .collect())
    }

    /// The attempts of the steps `only`, folded from the plan's attempt events.
    async fn attempt_log(
        &self,
        plan_id: &str,
        only: std::collections::HashSet<String>,
    ) -> Result<AttemptLog, EngineError> {
        const PAGE: usize = 1_000;
        let mut log = AttemptLog::new(plan_id, Some(only));
        let mut after = 0;
        loop {
            let rows = self
                .inner
                .store
                .read_events_of_kind(plan_id, ATTEMPT_EVENTS, after, PAGE)
                .await?;
            let n = rows.len();
            for row in rows {
                after = row.seq;
                log.apply(&from_stored(row)?);
            }
            if n < PAGE {
                return Ok(log);
            }
        }
    }

    /// Every checkpoint of a plan, oldest first.
    pub async fn checkpoints(&self, plan_id: &str) -> Result<Vec<CheckpointSummary>, EngineError> {
        every_page(|cursor| async move {
            self.checkpoints_page(plan_id, cursor.as_deref(), 1_000)
                .await
        })
        .await
    }

    /// A page of a plan's checkpoints, oldest first; the cursor is the seq of the last one.
    pub async fn checkpoints_page(
        &self,
        plan_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<CheckpointSummary>, EngineError> {
        let after = seq_cursor(cursor)?;
        if self.inner.store.get_plan(plan_id).await?.is_none() {
            return Err(EngineError::PlanNotFound(plan_id.to_owned()));
        }
        let rows = self
            .inner
            .store
            .list_checkpoints(plan_id, after, limit.saturating_add(1))
            .await?;
        let items = rows
            .into_iter()
            .map(|r| CheckpointSummary {
                checkpoint_id: checkpoint_id(r.seq),
                plan_id: r.plan_id,
                seq: r.seq,
                trigger: CheckpointTrigger::parse(&r.trigger).unwrap_or(CheckpointTrigger::Manual),
                label: r.label,
                created_at: Timestamp::from_micros(r.at),
            })
            .collect();
        Ok(Page::cut(items, limit, |c| c.seq.to_string()))
    }

    async fn checkpoint_state(
        &self,
        plan_id: &str,
        cid: &str,
    ) -> Result<(CheckpointView, Arc<PlanState>), EngineError> {
        let (row, state) = self.checkpoint_row_and_fold(plan_id, cid).await?;
        let trigger = CheckpointTrigger::parse(&row.trigger).unwrap_or(CheckpointTrigger::Manual);
        Ok((
            CheckpointView::of(&state, trigger, row.label, Timestamp::from_micros(row.at)),
            state,
        ))
    }

    /// A checkpoint's seq and the state it implies, without its view.
    async fn checkpoint_fold(
        &self,
        plan_id: &str,
        cid: &str,
    ) -> Result<(u64, Arc<PlanState>), EngineError> {
        let (row, state) = self.checkpoint_row_and_fold(plan_id, cid).await?;
        Ok((row.seq, state))
    }

    async fn checkpoint_row_and_fold(
        &self,
        plan_id: &str,
        cid: &str,
    ) -> Result<(cairn_store::CheckpointRow, Arc<PlanState>), EngineError> {
        let not_found = || EngineError::CheckpointNotFound {
            plan_id: plan_id.to_owned(),
            checkpoint_id: cid.to_owned(),
        };
        let seq = checkpoint_seq(cid).ok_or_else(not_found)?;
        let reach = match self.inner.opts.snapshot_every {
            0 => u64::MAX,
            every => every,
        };
        let (store, folds) = (&*self.inner.store, &self.inner.folds);
        // With no state cached at this position, the checkpoint's row and its state are read
        // at once (on PostgreSQL, two round trips together instead of one after the other); the
        // state is dropped if there is no such checkpoint. A cached state is trusted only once
        // the row's time is known, so then the row comes first.
        let (row, folded) = if folds.holds(plan_id, seq) {
            (store.get_checkpoint(plan_id, seq).await?, None)
        } else {
            let (row, folded) = tokio::join!(
                store.get_checkpoint(plan_id, seq),
                folds.fold(store, plan_id, seq, reach)
            );
            (row?, Some(folded))
        };
        // A checkpoint is a mark on one of the plan's events, deleted with them: when it is
        // found, so is the plan (one store read the less, a round trip on PostgreSQL).
        let row = match row {
            Some(row) => row,
            None if store.get_plan(plan_id).await?.is_none() => {
                return Err(EngineError::PlanNotFound(plan_id.to_owned()));
            }
            None => return Err(not_found()),
        };
        let state = match folded {
            Some(folded) => folds.keep(folded?, seq, row.at),
            None => folds.state_at(store, plan_id, seq, row.at, reach).await?,
        };
        Ok((row, state))
    }

    /// A checkpoint with the state it implies.
    pub async fn checkpoint(
        &self,
        plan_id: &str,
        cid: &str,
    ) -> Result<CheckpointView, EngineError> {
        Ok(self.checkpoint_state(plan_id, cid).await?.0)
    }

    /// Restores a plan to a checkpoint: it ends up paused (reason `restored`).
    pub async fn restore(
        &self,
        plan_id: &str,
        cid: &str,
        actor: &str,
        reason: Option<String>,
    ) -> Result<Arc<PlanState>, EngineError> {
        // The checkpoint's folded state itself (shared with the cache), not its view: the core
        // records only what differs from the plan's state.
        let (seq, state) = self.checkpoint_fold(plan_id, cid).await?;
        Ok(self
            .send(
                plan_id,
                Command::Restore {
                    checkpoint_id: cairn_core::event::checkpoint_id(seq),
                    seq,
                    target: state,
                    reason,
                },
                actor.into(),
            )
            .await?
            .state)
    }

    /// A new plan, paused, whose state equals the checkpoint's.
    pub async fn fork(
        &self,
        plan_id: &str,
        cid: &str,
        new_plan_id: Option<String>,
        actor: &str,
        reason: Option<String>,
    ) -> Result<PlanState, EngineError> {
        let (view, state) = self.checkpoint_state(plan_id, cid).await?;
        let new_id = new_plan_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let mut definition = state.definition();
        definition.plan_id = Some(new_id.clone());
        let fork = crate::actor::Fork {
            checkpoint_id: view.checkpoint_id.clone(),
            new_plan_id: new_id,
            register: Command::Register {
                definition,
                origin: Some(Box::new(Origin {
                    how: "fork".into(),
                    plan_id: plan_id.to_owned(),
                    checkpoint_id: view.checkpoint_id,
                    state: state.materialize(),
                })),
            },
            reason,
            actor: actor.to_owned(),
        };
        let request = Request::Fork {
            plan_id: plan_id.to_owned(),
            fork: Box::new(fork),
        };
        match self.dispatch(request).await? {
            Reply::Forked { state } => Ok(*state),
            other => Err(unexpected(other)),
        }
    }

    /// Forks on this node: `NotOwner` when another node drives the source plan.
    async fn fork_here(
        &self,
        plan_id: &str,
        fork: crate::actor::Fork,
    ) -> Result<PlanState, EngineError> {
        // The source's actor commits the new plan and its own `plan_forked` in one transaction.
        // An actor that stops before handling it drops the reply: deliver it again.
        for _ in 0..DELIVERIES {
            let (reply, rx) = oneshot::channel();
            let fork = Box::new(fork.clone());
            self.deliver(plan_id, Msg::Fork { fork, reply }).await?;
            if let Ok(answer) = rx.await {
                return answer;
            }
        }
        Err(EngineError::ShuttingDown)
    }

    /// A checkpoint as a self-contained JSON document.
    pub async fn export_checkpoint(
        &self,
        plan_id: &str,
        cid: &str,
    ) -> Result<CheckpointExport, EngineError> {
        let (view, state) = self.checkpoint_state(plan_id, cid).await?;
        Ok(CheckpointExport {
            format: EXPORT_FORMAT.into(),
            checkpoint: view,
            state: state.materialize(),
        })
    }

    /// Creates a plan (paused, reason `restored`) from an exported checkpoint.
    pub async fn import_checkpoint(
        &self,
        export: CheckpointExport,
        new_plan_id: Option<String>,
        actor: &str,
    ) -> Result<PlanState, EngineError> {
        if export.format != EXPORT_FORMAT {
            return Err(cairn_core::Invalid::one(
                "format",
                format!(
                    "{:?} is not a cairn checkpoint export (expected {EXPORT_FORMAT})",
                    export.format
                ),
            )
            .into());
        }
        let new_id = new_plan_id.unwrap_or_else(|| export.checkpoint.plan_id.clone());
        let mut definition = Plan {
            plan_id: Some(new_id.clone()),
            query: export.state.query.clone(),
            metadata: export.state.metadata.clone(),
            max_parallel: export.state.max_parallel,
            steps: export.state.steps.iter().map(|s| s.def.clone()).collect(),
            // An export carries the materialised state, which has no `on_failure`: an imported
            // plan fails without rolling back unless told otherwise.
            on_failure: Default::default(),
            inputs: export.state.inputs.clone(),
            template: export.state.template.clone(),
        };
        definition.validate()?;
        definition.plan_id = Some(new_id.clone());
        self.create(
            new_id,
            definition,
            Some(Box::new(Origin {
                how: "import".into(),
                plan_id: export.checkpoint.plan_id.clone(),
                checkpoint_id: export.checkpoint.checkpoint_id.clone(),
                state: export.state,
            })),
            actor,
        )
        .await
    }

    /// Everything about a plan in one document, for audit.
    pub async fn snapshot(&self, plan_id: &str) -> Result<Snapshot, EngineError> {
        let state = self.state(plan_id).await?;
        let checkpoints = self.checkpoints(plan_id).await?;
        let interventions = self.interventions(plan_id).await?;
        Ok(Snapshot::of(
            &state,
            checkpoints,
            interventions,
            self.inner.now(),
        ))
    }

    /// The recorded interventions of a plan, applied and refused, oldest first.
    pub async fn interventions(&self, plan_id: &str) -> Result<Vec<Intervention>, EngineError> {
        every_page(|cursor| async move {
            self.interventions_page(plan_id, cursor.as_deref(), 1_000)
                .await
        })
        .await
    }

    /// A page of a plan's interventions, oldest first; the cursor is the log position of the
    /// last one.
    pub async fn interventions_page(
        &self,
        plan_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Intervention>, EngineError> {
        let after = seq_cursor(cursor)?;
        if self.inner.store.get_plan(plan_id).await?.is_none() {
            return Err(EngineError::PlanNotFound(plan_id.to_owned()));
        }
        let rows = self
            .inner
            .store
            .read_events_of_kind(
                plan_id,
                &["intervention_applied", "intervention_failed"],
                after,
                limit.saturating_add(1),
            )
            .await?;
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            let seq = row.seq;
            match from_stored(row)?.kind {
                cairn_core::EventKind::InterventionApplied { intervention, .. }
                | cairn_core::EventKind::InterventionFailed { intervention } => {
                    items.push((seq, *intervention))
                }
                _ => {}
            }
        }
        let page = Page::cut(items, limit, |(seq, _)| seq.to_string());
        Ok(Page {
            items: page.items.into_iter().map(|(_, i)| i).collect(),
            next_cursor: page.next_cursor,
        })
    }

    /// The versions of a plan's definition, oldest first, each with its cause (the
    /// registration, an intervention or a restore), folded from the log.
    pub async fn plan_versions(&self, plan_id: &str) -> Result<Vec<PlanVersion>, EngineError> {
        let mut fold = VersionFold::new(plan_id);
        self.fold_log(plan_id, |e| {
            fold.apply(e);
            true
        })
        .await?;
        Ok(fold.into_versions())
    }

    /// Version `version` of a plan's definition: what made it and the definition then.
    pub async fn plan_version(
        &self,
        plan_id: &str,
        version: u64,
    ) -> Result<VersionedDefinition, EngineError> {
        let mut fold = VersionFold::new(plan_id);
        let mut found = None;
        self.fold_log(plan_id, |e| {
            if let Some(v) = fold.apply(e) {
                if v.version == version {
                    found = Some(v.clone());
                    return false;
                }
            }
            true
        })
        .await?;
        match found {
            Some(v) => Ok(VersionedDefinition {
                version: v,
                definition: fold.definition(),
            }),
            None => Err(no_version(plan_id, version, fold.versions())),
        }
    }

    /// The structural diff of a plan's definition between two versions. `to` defaults to the
    /// latest, `from` to the version before `to` (`to` itself when it is the first).
    pub async fn plan_diff(
        &self,
        plan_id: &str,
        from: Option<u64>,
        to: Option<u64>,
    ) -> Result<PlanDiff, EngineError> {
        let mut fold = VersionFold::new(plan_id);
        let mut defs: Vec<(u64, Plan)> = Vec::new();
        // The version before `to`, when `from` defaults to it.
        let mut pinned: Option<u64> = None;
        self.fold_log(plan_id, |e| {
            let made = fold.apply(e).map(|v| v.version);
            if let Some(v) = made {
                if from.is_none() && to == Some(v) {
                    pinned = defs.last().map(|(k, _)| *k);
                }
                // Keep the definitions asked for, and the latest two for the defaults.
                let keep = |k: u64| from == Some(k) || to == Some(k) || pinned == Some(k);
                let last = defs.pop();
                defs.retain(|(k, _)| keep(*k));
                defs.extend(last);
                defs.push((v, fold.definition()));
            }
            true
        })
        .await?;
        let versions = fold.versions();
        let to_v = match to {
            Some(v) => v,
            None => versions.last().map(|v| v.version).unwrap_or(0),
        };
        let Some(to_at) = versions.iter().position(|v| v.version == to_v) else {
            return Err(no_version(plan_id, to_v, versions));
        };
        let from_v = match from {
            Some(v) => v,
            None => versions[to_at.saturating_sub(1)].version,
        };
        if !versions.iter().any(|v| v.version == from_v) {
            return Err(no_version(plan_id, from_v, versions));
        }
        let def = |v: u64| {
            defs.iter()
                .rev()
                .find(|(k, _)| *k == v)
                .map(|(_, d)| d)
                .ok_or_else(|| EngineError::Corrupt(format!("version {v} of {plan_id} was lost")))
        };
        let (before, after) = (def(from_v)?, def(to_v)?);
        Ok(PlanDiff {
            plan_id: plan_id.to_owned(),
            from: from_v,
            to: to_v,
            diff: Diff::between(before, after),
        })
    }

    /// Replays a plan's whole log through `f`, oldest first, until `f` answers false. An
    /// unknown plan is an error.
    async fn fold_log(
        &self,
        plan_id: &str,
        mut f: impl FnMut(&Event) -> bool,
    ) -> Result<(), EngineError> {
        let mut after = 0;
        loop {
            let rows = self
                .inner
                .store
                .read_events(plan_id, after, None, 4_096)
                .await?;
            let n = rows.len();
            for row in rows {
                let e = from_stored(row)?;
                after = e.seq;
                if !f(&e) {
                    return Ok(());
                }
            }
            if n < 4_096 {
                break;
            }
        }
        if after == 0 {
            return Err(EngineError::PlanNotFound(plan_id.to_owned()));
        }
        Ok(())
    }

    /// Deletes a plan that is not running (with its whole log). In a cluster, a plan another
    /// live node has loaded is deleted by that node, so no actor outlives its plan.
    pub async fn delete(&self, plan_id: &str) -> Result<(), EngineError> {
        let request = Request::Delete {
            plan_id: plan_id.to_owned(),
        };
        match self.dispatch(request).await? {
            Reply::Deleted => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes here: `NotOwner` when another live node holds the plan's lease.
    async fn delete_here(&self, plan_id: &str) -> Result<(), EngineError> {
        if self.inner.clustered() {
            if let Some(lease) = self.inner.store.lease(plan_id).await? {
                let live = !lease.released && lease.expires_at > self.inner.now().as_micros();
                if live && lease.owner != self.inner.opts.node_id {
                    return Err(EngineError::NotOwner {
                        plan_id: plan_id.to_owned(),
                        owner: lease.owner,
                    });
                }
            }
        }
        let state = self.state(plan_id).await?;
        cairn_core::decide::check_delete(&state)?;
        let live = self.inner.plans.lock().ok().and_then(|mut p| {
            p.fresh.remove(plan_id);
            let tx = p.live.remove(plan_id)?.tx;
            p.note_unload(plan_id);
            Some(tx)
        });
        if let Some(tx) = live {
            let _ = self.inner.post(&tx, Msg::Stop);
        }
        self.inner.folds.forget(plan_id);
        if self.inner.store.delete_plan(plan_id).await? {
            Ok(())
        } else {
            Err(EngineError::PlanNotFound(plan_id.to_owned()))
        }
    }

    /// Live events of all plans. With `after`, past events with a greater global id come first,
    /// from the store, then the live stream: nothing lost, nothing repeated.
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        Subscription::new(
            self.inner.store.clone(),
            self.inner.stream.subscribe(),
            None,
            after,
        )
    }

    /// Live events this engine committed (this node's share, in a cluster; every event, alone),
    /// as their commits finish: each plan's in order, different plans' in any order, and none
    /// read from the store. For consumers of a node's own work, such as metrics, which should
    /// not make the node order and decode every other node's events.
    pub fn subscribe_local(&self) -> Subscription {
        Subscription::local(
            self.inner.store.clone(),
            self.inner.stream.subscribe_local(),
        )
    }

    /// Like [`Engine::subscribe`], for one plan.
    pub fn subscribe_plan(&self, plan_id: &str, after: Option<u64>) -> Subscription {
        Subscription::new(
            self.inner.store.clone(),
            self.inner.stream.subscribe(),
            Some(plan_id.to_owned()),
            after,
        )
    }

    /// Waits until the plan is settled: completed, failed, cancelled, or paused with nothing
    /// running. Returns its state then.
    pub async fn wait_settled(&self, plan_id: &str) -> Result<Arc<PlanState>, EngineError> {
        let mut sub = self.subscribe_plan(plan_id, None);
        loop {
            let state = self.state(plan_id).await?;
            if is_settled(&state) {
                return Ok(state);
            }
            // Look again only after an event that can settle a plan (or a lag notice).
            loop {
                match sub.next().await {
                    Some(Notice::Event(e)) if e.seq <= state.seq || !may_settle(&e.kind) => {
                        continue
                    }
                    Some(_) => break,
                    None => return Err(EngineError::ShuttingDown),
                }
            }
        }
    }

    /// Stops driving every plan. Attempts in flight are abandoned; recovery runs them again the
    /// next time the store is opened.
    pub async fn shutdown(&self) {
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        let actors: Vec<_> = self
            .inner
            .plans
            .lock()
            .map(|mut p| p.live.drain().map(|(_, l)| l.tx).collect())
            .unwrap_or_default();
        for tx in actors {
            let _ = self.inner.post(&tx, Msg::Stop);
        }
        // The lease renewal, resting or not, sees the engine closed and ends.
        self.inner.actor_started.notify_one();
        // Snapshots due for the events published so far are being written (each is spawned
        // before its events are published): wait for them, bounded, since a store that does
        // not answer must not hold the shutdown (a snapshot is a cache of the log).
        self.inner.snapshot_writes.close();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.inner.snapshot_writes.wait(),
        )
        .await;
    }
}

/// A command's committed result, wherever it was carried out.
pub(crate) struct Done {
    pub(crate) state: Arc<PlanState>,
    pub(crate) intervention: Option<Intervention>,
    pub(crate) refusal: Option<cairn_core::Refusal>,
    /// The checkpoint the command took, if it took one.
    pub(crate) checkpoint: Option<CheckpointSummary>,
}

/// A reply of the wrong kind for its request (a node of another build).
fn unexpected(reply: Reply) -> EngineError {
    let kind = match reply {
        Reply::Done { .. } => "done",
        Reply::Recorded => "recorded",
        Reply::NotRecorded { .. } => "not_recorded",
        Reply::Dropped => "dropped",
        Reply::Forked { .. } => "forked",
        Reply::Deleted => "deleted",
        Reply::NotOwner { .. } => "not_owner",
        Reply::Error { .. } => "error",
    };
    EngineError::Store(cairn_store::StoreError::Backend(format!(
        "a forwarded request was answered with {kind:?}, which does not fit it"
    )))
}

/// Reads a list cursor of this engine's making: the log position to continue after.
fn seq_cursor(cursor: Option<&str>) -> Result<u64, EngineError> {
    match cursor.filter(|c| !c.is_empty()) {
        None => Ok(0),
        Some(c) => c
            .parse()
            .map_err(|_| cairn_store::StoreError::BadCursor(c.to_owned()).into()),
    }
}

/// Can this event leave a plan settled (ended, or paused with nothing running)? The core's
/// definition ([`cairn_core::EventKind::may_settle`]), kept here for callers of the engine.
pub fn may_settle(kind: &cairn_core::EventKind) -> bool {
    kind.may_settle()
}

fn summary_of(e: &Event) -> CheckpointSummary {
    let mark = e.checkpoint.clone();
    CheckpointSummary {
        checkpoint_id: checkpoint_id(e.seq),
        plan_id: e.plan_id.clone(),
        seq: e.seq,
        trigger: mark
            .as_ref()
            .map(|m| m.trigger)
            .unwrap_or(CheckpointTrigger::Manual),
        label: mark.and_then(|m| m.label),
        created_at: e.at,
    }
}

/// Every item of a paged listing: pages fetched one after the other until the last.
async fn every_page<T, F, Fut>(mut page: F) -> Result<Vec<T>, EngineError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Page<T>, EngineError>>,
{
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let p = page(cursor.take()).await?;
        out.extend(p.items);
        match p.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

#[cfg(test)]
mod fresh_tests {
    use super::*;
    use std::time::Duration;

    /// However many plans are registered, at most `FRESH_KEPT` states are kept, each for its
    /// time alone, and a kept state is handed out once.
    #[tokio::test(start_paused = true)]
    async fn kept_registered_states_are_bounded_in_number_and_time() {
        let mut p = Plans::default();
        let keep = Duration::from_secs(2);
        for i in 0..FRESH_KEPT + 10 {
            let id = format!("p{i}");
            p.keep_fresh(&id, PlanState::empty(&id), 1, 0, keep);
        }
        assert_eq!(p.fresh.len(), FRESH_KEPT);
        assert!(p.take_fresh("p0").is_none(), "the oldest stays");
        assert!(p.take_fresh("p20").is_some());
        assert!(p.take_fresh("p20").is_none(), "handed out twice");
        tokio::time::advance(keep + Duration::from_millis(1)).await;
        assert!(p.take_fresh("p21").is_none(), "kept past its time");
        assert!(p.fresh.is_empty());
        assert!(p.fresh_order.is_empty());
        // Nothing kept for a zero time, nor for a plan whose actor came and went meanwhile.
        p.keep_fresh("z", PlanState::empty("z"), 1, 0, Duration::ZERO);
        p.note_unload("u");
        p.keep_fresh("u", PlanState::empty("u"), 1, 0, keep);
        assert!(p.fresh.is_empty());
    }
}

#[cfg(test)]
mod future_sizes {
    use super::*;
    use crate::actor::PlanActor;

    /// The size of what `f` returns (a future, never polled nor even made).
    fn size_of_output<A, R>(_: impl FnOnce(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// Every live plan's task is as large as the actor's future, and every request in flight
    /// holds its call's: rare paths (a load, a reload, a fork, a retry) are boxed, and a command
    /// travels boxed, so neither pays for what it seldom needs. (They were 4,864 and 2,568
    /// bytes: 1,000 plans starting at once held 7 MB in them.)
    #[test]
    fn the_futures_every_plan_and_request_hold_stay_small() {
        let run = size_of_output(|a: PlanActor| a.run());
        let start = size_of_output(|e: &'static Engine| e.start("p", "ann", None));
        let pause = size_of_output(|e: &'static Engine| {
            e.pause("p", cairn_core::PauseMode::Boundary, None, "ann", None)
        });
        let deliver = size_of_output(|e: &'static Engine| e.deliver("p", Msg::Stop));
        assert!(run <= 2048, "a plan's task holds {run} bytes");
        assert!(start <= 1024, "a start in flight holds {start} bytes");
        assert!(pause <= 1024, "a pause in flight holds {pause} bytes");
        assert!(deliver <= 768, "a delivery in flight holds {deliver} bytes");
    }
}
