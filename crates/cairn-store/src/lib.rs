//! The storage contract of cairn.
//!
//! A store keeps, per plan, an append-only log of events (`seq` contiguous from 1) plus a small
//! index row (the plan's current state name and last `seq`) so plans can be listed without
//! replaying them. It knows nothing about what events *mean*: their `kind` and `data` are opaque
//! strings here, so the engine's event vocabulary can grow without touching any backend.
//!
//! Architecture invariants:
//! - Only backends know SQL. Nothing here names a database.
//! - `EventLog::append` is the only way a plan changes, and it is fenced twice: by `expected_seq`
//!   (optimistic concurrency: the caller must have seen the whole log) and by the lease `Fence`
//!   (one engine node drives a plan at a time).
//! - An `Ok` from `append` or `create_plan` means the events are durable (fsync'd unless the
//!   backend was opened with durability relaxed on purpose).
//!
//! The contract is split by concern, one narrow trait each: [`EventLog`], [`PlanIndex`],
//! [`Leases`], [`Snapshots`], [`Tokens`], [`Cursors`], [`Nodes`] and [`Templates`], with one [`StoreError`]. [`Store`] is
//! all of them together, implemented for any type that implements each.
//!
//! With the `conformance` feature, [`conformance`] holds the test suite every backend must pass,
//! one module per trait (it needs tokio, so the production build leaves it out).

use async_trait::async_trait;

#[cfg(feature = "conformance")]
pub mod conformance;

/// Microseconds since the Unix epoch. Every timestamp in storage is one of these.
pub type Micros = i64;

/// A mark saying "this event is also a checkpoint": the checkpoint is the log position of the
/// event it is attached to, so storing one costs a few bytes, never a copy of the state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointMark {
    /// `initial`, `step`, `pause` or `manual` (opaque to the store).
    pub trigger: String,
    pub label: Option<String>,
}

/// An event as the engine hands it to the store, before the store gives it a global id.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub seq: u64,
    pub at: Micros,
    pub actor: String,
    /// The event type, e.g. `step_completed`.
    pub kind: String,
    /// The event's data as a JSON document.
    pub data: String,
    /// The log format `data` is written in (the core's `log::FORMAT` when it was written). A
    /// store keeps it beside the data; events stored before formats existed are format 1.
    pub format: u32,
    pub checkpoint: Option<CheckpointMark>,
}

impl NewEvent {
    /// This event as stored under global id `id` in the log of `plan_id`.
    pub fn stored(self, id: u64, plan_id: String) -> StoredEvent {
        StoredEvent {
            id,
            plan_id,
            seq: self.seq,
            at: self.at,
            actor: self.actor,
            kind: self.kind,
            data: self.data,
            format: self.format,
            checkpoint: self.checkpoint,
        }
    }
}

/// An event as stored: a [`NewEvent`] plus the plan it belongs to and its global id.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Global, strictly increasing across all plans in commit order; starts at 1.
    pub id: u64,
    pub plan_id: String,
    pub seq: u64,
    pub at: Micros,
    pub actor: String,
    pub kind: String,
    pub data: String,
    /// The log format of `data` (1 for events stored before formats existed).
    pub format: u32,
    pub checkpoint: Option<CheckpointMark>,
}

/// Ownership of a plan by one engine node. Appends carrying a stale fence are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub node: String,
    /// Increases every time ownership of the plan moves to another node.
    pub token: u64,
}

/// Registers a new plan with its first events.
#[derive(Debug, Clone)]
pub struct CreatePlan {
    pub plan_id: String,
    pub created_at: Micros,
    /// The plan's state name after these events (indexed for listing).
    pub state: String,
    /// Must start at seq 1 and be contiguous.
    pub events: Vec<NewEvent>,
    /// The plan's reviews after these events (a fork or an import may carry closed ones).
    pub reviews: Vec<ReviewRow>,
}

/// Appends events to an existing plan.
#[derive(Debug, Clone)]
pub struct Append {
    pub plan_id: String,
    /// The last seq the caller has seen; `events[0].seq` must be `expected_seq + 1`.
    pub expected_seq: u64,
    /// `None` appends without a lease (administrative writes on a plan nobody drives).
    pub fence: Option<Fence>,
    /// The plan's state name after these events, when it changed.
    pub state: Option<String>,
    pub events: Vec<NewEvent>,
    /// Reviews these events opened or changed (decided, voided), as they stand after them:
    /// written to the review index in the same transaction, replacing the rows of the same
    /// `(plan_id, review_id)`.
    pub reviews: Vec<ReviewRow>,
}

/// A review in the index across plans (the review inbox). The store knows only the columns it
/// filters and orders by; `data` is the whole review as a JSON document, opaque like an event's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewRow {
    pub plan_id: String,
    /// Unique within its plan.
    pub review_id: String,
    /// `open` or `closed` (opaque to the store; listings filter on it).
    pub state: String,
    pub opened_at: Micros,
    pub data: String,
}

/// How many reviews are open and since when the oldest has waited. For metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenReviews {
    pub count: u64,
    /// `opened_at` of the oldest open review (`None` when none is open).
    pub oldest_opened_at: Option<Micros>,
}

/// The index row of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRow {
    pub plan_id: String,
    pub state: String,
    pub created_at: Micros,
    pub updated_at: Micros,
    pub last_seq: u64,
}

/// A checkpoint as listed: the position and mark of the event that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    pub plan_id: String,
    pub seq: u64,
    pub at: Micros,
    pub trigger: String,
    pub label: Option<String>,
}

/// One page of a listing. `next_cursor` is opaque; `None` on the last page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// The key of a row in a keyset listing (plans, reviews): its time and its row number. Both
/// backends write it in [`Page::next_cursor`] as `TIME.PK`.
pub type KeysetCursor = (Micros, i64);

/// Reads a cursor written by [`format_cursor`]; anything else is `BadCursor`.
pub fn parse_cursor(s: &str) -> StoreResult<KeysetCursor> {
    let bad = || StoreError::BadCursor(s.to_owned());
    let (at, pk) = s.split_once('.').ok_or_else(bad)?;
    Ok((
        at.parse().map_err(|_| bad())?,
        pk.parse().map_err(|_| bad())?,
    ))
}

/// The cursor of a listing that resumes after the row with this key.
pub fn format_cursor((at, pk): KeysetCursor) -> String {
    format!("{at}.{pk}")
}

/// An API token as stored: never the token itself, only its SHA-256 hash (hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: String,
    pub user: String,
    /// `viewer`, `operator`, `admin` or `worker` (opaque to the store).
    pub role: String,
    pub hash: String,
    pub created_at: Micros,
    pub revoked_at: Option<Micros>,
    /// When the token stops being accepted (`None`: never).
    pub expires_at: Option<Micros>,
}

/// Counters of a backend's writer since it was opened, for metrics. All monotonic except
/// `max_batch`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StoreStats {
    /// Transactions committed.
    pub commits: u64,
    /// Write requests answered (creates and appends; the sum of all batch sizes).
    pub requests: u64,
    /// Events inserted by committed requests.
    pub events: u64,
    /// The largest number of requests committed together.
    pub max_batch: u64,
    /// Seconds spent committing, summed over all commits.
    pub busy_seconds: f64,
    /// Commits made by the caller itself, the writer being idle (see each store's writer).
    pub inline_commits: u64,
    /// Batches by the time they took, as [`WriterStats::commit_times`].
    pub commit_times: [u64; COMMIT_BUCKETS_US.len() + 1],
}

/// A lease as stored: who drives a plan, under which fence, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub plan_id: String,
    pub owner: String,
    pub token: u64,
    /// When the lease runs out (by the store's clock: the database's, for a shared store).
    pub expires_at: Micros,
    /// Given up by its owner ([`Leases::release`]), rather than left to expire.
    pub released: bool,
}

/// An engine node as the store knows it (several share one database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub node_id: String,
    /// Where other nodes reach it (`http://host:port`), when it serves HTTP.
    pub address: Option<String>,
    pub started_at: Micros,
    /// Its latest heartbeat, by the store's clock.
    pub heartbeat_at: Micros,
    /// Plans whose lease it holds and that have not expired.
    pub plans_owned: u64,
}

/// One version of a named template. The store keeps `content` as given (the caller's canonical
/// JSON of the template) and compares it byte for byte to tell an identical push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRow {
    pub name: String,
    /// 1, 2, … per name, never reused.
    pub version: u64,
    pub content: String,
    pub created_at: Micros,
    pub created_by: String,
    /// When the name was deleted (then hidden from listings and new instantiations); `None`
    /// while it is live.
    pub deleted_at: Option<Micros>,
}

/// A push of a template's content, see [`Templates::put_template_version`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTemplateVersion {
    pub name: String,
    pub content: String,
    pub created_at: Micros,
    pub created_by: String,
}

/// What a backend's writer has done since the store was opened ([`WriterCounters::snapshot`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed (each one durable commit).
    pub commits: u64,
    /// Write requests answered (the sum of all batch sizes).
    pub requests: u64,
    /// Events inserted by committed requests.
    pub events: u64,
    /// The largest batch seen.
    pub max_batch: u64,
    /// Time spent from `BEGIN` to the end of `COMMIT`, summed over all batches.
    pub busy: std::time::Duration,
    /// Batches of one request committed by its caller, the writer thread being idle.
    pub inline_commits: u64,
    /// Batches by the time they took (see `busy`): `commit_times[i]` counts those that took at
    /// most [`COMMIT_BUCKETS_US`]`[i]` microseconds and more than the bound before; the last
    /// counts those longer than every bound.
    pub commit_times: [u64; COMMIT_BUCKETS_US.len() + 1],
}

/// Upper bounds, in microseconds, of the buckets that count batches by the time they took
/// ([`WriterStats::commit_times`]): about a fifth apart below 10 ms, where commits are, then
/// coarser up to 10 s (a disk that stalls on a busy machine still has its tail named).
pub const COMMIT_BUCKETS_US: [u64; 30] = [
    50, 75, 100, 125, 150, 175, 200, 250, 300, 350, 400, 500, 600, 700, 800, 1_000, 1_250, 1_500,
    2_000, 2_500, 3_000, 4_000, 5_000, 6_000, 8_000, 10_000, 25_000, 100_000, 1_000_000,
    10_000_000,
];

impl WriterStats {
    /// The time within which a share `q` (0 to 1) of the batches committed since `earlier` (a
    /// snapshot of the same counters) took, as the upper bound of its bucket: `None` when none
    /// committed, or when it lies beyond the last bound.
    pub fn commit_quantile(&self, earlier: &WriterStats, q: f64) -> Option<std::time::Duration> {
        let counts: Vec<u64> = self
            .commit_times
            .iter()
            .zip(&earlier.commit_times)
            .map(|(now, then)| now.saturating_sub(*then))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        // The rank of the batch asked for, counted from 1.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return COMMIT_BUCKETS_US
                    .get(i)
                    .map(|us| std::time::Duration::from_micros(*us));
            }
        }
        None
    }

    /// Requests per commit.
    pub fn mean_batch(&self) -> f64 {
        if self.commits == 0 {
            0.0
        } else {
            self.requests as f64 / self.commits as f64
        }
    }
}

impl From<WriterStats> for StoreStats {
    fn from(w: WriterStats) -> StoreStats {
        StoreStats {
            commits: w.commits,
            requests: w.requests,
            events: w.events,
            max_batch: w.max_batch,
            busy_seconds: w.busy.as_secs_f64(),
            inline_commits: w.inline_commits,
            commit_times: w.commit_times,
        }
    }
}

/// The counters a group-commit writer keeps (shared with the store that reports them), and why
/// its last batch failed for lack of storage, until the next commit.
#[derive(Debug, Default)]
pub struct WriterCounters {
    commits: std::sync::atomic::AtomicU64,
    requests: std::sync::atomic::AtomicU64,
    events: std::sync::atomic::AtomicU64,
    max_batch: std::sync::atomic::AtomicU64,
    busy_nanos: std::sync::atomic::AtomicU64,
    inline_commits: std::sync::atomic::AtomicU64,
    commit_times: [std::sync::atomic::AtomicU64; COMMIT_BUCKETS_US.len() + 1],
    unavailable: std::sync::Mutex<Option<String>>,
}

impl WriterCounters {
    /// A batch of `n` requests was taken.
    pub fn batch(&self, n: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.requests.fetch_add(n, Relaxed);
        self.max_batch.fetch_max(n, Relaxed);
    }

    /// A transaction inserting `events` events committed: storage works again.
    pub fn committed(&self, events: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.commits.fetch_add(1, Relaxed);
        self.events.fetch_add(events, Relaxed);
        self.set_unavailable(None);
    }

    /// Time spent on a batch, from `BEGIN` to the end of `COMMIT`.
    pub fn busy(&self, nanos: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.busy_nanos.fetch_add(nanos, Relaxed);
        let bucket = COMMIT_BUCKETS_US.partition_point(|us| us.saturating_mul(1_000) < nanos);
        if let Some(n) = self.commit_times.get(bucket) {
            n.fetch_add(1, Relaxed);
        }
    }

    /// The batch about to be committed was its caller's own (the writer was idle).
    pub fn inline(&self) {
        self.inline_commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// A batch failed for lack of storage (`why` says which), or `None`: it works again.
    pub fn set_unavailable(&self, why: Option<String>) {
        *self.unavailable.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    /// Why the last batch failed for lack of storage, until a batch commits.
    pub fn unavailable(&self) -> Option<String> {
        self.unavailable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn snapshot(&self) -> WriterStats {
        use std::sync::atomic::Ordering::Relaxed;
        WriterStats {
            commits: self.commits.load(Relaxed),
            requests: self.requests.load(Relaxed),
            events: self.events.load(Relaxed),
            max_batch: self.max_batch.load(Relaxed),
            busy: std::time::Duration::from_nanos(self.busy_nanos.load(Relaxed)),
            inline_commits: self.inline_commits.load(Relaxed),
            commit_times: std::array::from_fn(|i| self.commit_times[i].load(Relaxed)),
        }
    }
}

/// Why a store call failed. Messages are lowercase fragments that read well after "failed to".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("plan {0} already exists")]
    AlreadyExists(String),
    #[error("plan {0} not found")]
    NotFound(String),
    /// Someone else appended first: the caller's view of the log is stale.
    #[error("plan {plan_id}: expected last seq {expected}, the log is at {actual}")]
    SeqConflict {
        plan_id: String,
        expected: u64,
        actual: u64,
    },
    /// The caller's lease was taken over by another node.
    #[error("plan {plan_id} is driven by node {owner}; this node's lease is stale")]
    Fenced { plan_id: String, owner: String },
    /// Another live node holds the lease.
    #[error("plan {plan_id} is leased to node {owner} until {until}")]
    LeaseHeld {
        plan_id: String,
        owner: String,
        until: Micros,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("invalid cursor {0:?}")]
    BadCursor(String),
    /// The storage cannot take writes (or cannot be reached) for a reason outside the request:
    /// a full disk, an I/O error, a read-only or vanished file. The message says which. Nothing
    /// of the failed request was kept; the same request may succeed once the cause is gone.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Another process holds the store for writing (the message names it).
    #[error("{0}")]
    Locked(String),
    /// The backend itself failed (connection lost, corruption, a bug). Not the caller's fault.
    #[error("storage backend: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The event log: every plan's append-only events, their checkpoint marks, and the writer's
/// health. The one place a plan changes.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Creates a plan with its first events. `AlreadyExists` when the id is taken.
    async fn create_plan(&self, req: CreatePlan) -> StoreResult<Vec<StoredEvent>>;

    /// Creates a plan with its first events and, where the backend can, takes its lease for
    /// `node` (until `now + ttl_ms`) in the same transaction, so that a plan registered and
    /// started at once is driven from one commit. Answers the events and the lease's fence, or
    /// `None` when the lease was not taken with them (this default: the caller claims it).
    async fn create_plan_leased(
        &self,
        req: CreatePlan,
        node: &str,
        ttl_ms: u64,
        now: Micros,
    ) -> StoreResult<(Vec<StoredEvent>, Option<Fence>)> {
        let _ = (node, ttl_ms, now);
        Ok((self.create_plan(req).await?, None))
    }

    /// Appends events durably. `NotFound`, `SeqConflict`, `Fenced` or `Invalid` (empty batch,
    /// non-contiguous seqs) leave the log untouched.
    async fn append(&self, req: Append) -> StoreResult<Vec<StoredEvent>>;

    /// Creates a plan and appends to another one atomically: both are durable, or neither is
    /// kept (any error of either half). Answers the created plan's events, then the appended
    /// ones. A fork is one: the new plan and the source's record of it.
    async fn create_plan_with(
        &self,
        create: CreatePlan,
        append: Append,
    ) -> StoreResult<(Vec<StoredEvent>, Vec<StoredEvent>)>;

    /// Events of one plan with `after_seq < seq <= until_seq` (no upper bound when `None`),
    /// oldest first, at most `limit`. `NotFound` for an unknown plan.
    async fn read_events(
        &self,
        plan_id: &str,
        after_seq: u64,
        until_seq: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>>;

    /// Events of one plan whose kind is one of `kinds`, oldest first, at most `limit`, after
    /// `after_seq`.
    async fn read_events_of_kind(
        &self,
        plan_id: &str,
        kinds: &[&str],
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>>;

    /// Events of all plans with `id > after_id`, in id order, at most `limit`.
    ///
    /// Ids are assigned in commit order, gapless across committed writes (a deleted plan's ids
    /// are never reused): a transaction takes its ids only when no other writer that took ids
    /// is still uncommitted (SQLite by its single writer; PostgreSQL by one counter row whose
    /// lock is held until commit). So a reader that sees id N has seen every smaller id that
    /// will ever exist, and resuming after the last id read never skips an event committed
    /// later by any process. The engine's publisher relies on this.
    async fn read_all_events(&self, after_id: u64, limit: usize) -> StoreResult<Vec<StoredEvent>>;

    /// The highest global event id committed so far (0 when empty).
    async fn last_event_id(&self) -> StoreResult<u64>;

    /// Checkpoints of a plan, oldest first, with `seq > after_seq`, at most `limit`.
    async fn list_checkpoints(
        &self,
        plan_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<CheckpointRow>>;

    /// The checkpoint at exactly `seq`, if that event carries one.
    async fn get_checkpoint(&self, plan_id: &str, seq: u64) -> StoreResult<Option<CheckpointRow>>;

    /// Removes a plan with its events, checkpoints, snapshots, index row, reviews and lease.
    /// `Ok(false)` if unknown.
    async fn delete_plan(&self, plan_id: &str) -> StoreResult<bool>;

    /// Counters of the backend's writer, if it keeps any. For metrics.
    fn stats(&self) -> Option<StoreStats> {
        None
    }

    /// Why the last write failed with [`StoreError::Unavailable`], until a write succeeds again
    /// (`None` while writes work). For readiness checks.
    fn unavailable(&self) -> Option<String> {
        None
    }

    /// For a store that other processes write to as well (PostgreSQL shared by several
    /// nodes): notified, coalesced, when another process may have committed events, so the
    /// engine reads the log for them (it polls as well: a hint can be lost). `None` for a store
    /// only this process writes: every commit then passes through this process's engine.
    fn commit_hint(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }

    /// Whether the engine wants [`EventLog::commit_hint`] now (`true` until told otherwise):
    /// it needs hints only while someone follows its all-plans stream. A store may stop
    /// listening meanwhile, since a hint costs every listening connection (and its database
    /// backend) a wake-up per commit of any node; when hints are wanted again it listens
    /// again and then notifies the hint once, for what it did not hear meanwhile.
    fn want_commit_hints(&self, on: bool) {
        let _ = on;
    }
}

/// The plan index: one small row per plan (state name, last seq), kept by the log's writes, so
/// plans can be listed and counted without replaying them.
#[async_trait]
pub trait PlanIndex: Send + Sync + 'static {
    async fn get_plan(&self, plan_id: &str) -> StoreResult<Option<PlanRow>>;

    /// Plans newest first (by creation, ties by id), optionally of one state.
    async fn list_plans(
        &self,
        state: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<PlanRow>>;

    /// [`PlanIndex::list_plans`] keeping only the plans whose id contains `id_contains`
    /// (case-sensitive), in the same order and with the same cursors. Backends that cannot
    /// search keep this default, which refuses.
    async fn search_plans(
        &self,
        state: Option<&str>,
        id_contains: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<PlanRow>> {
        let _ = (state, id_contains, limit, cursor);
        Err(StoreError::Backend(
            "searching plans by id is not supported by this store".into(),
        ))
    }

    /// Ids of every plan whose state is one of `states` (recovery on start).
    async fn plans_in_states(&self, states: &[&str]) -> StoreResult<Vec<String>>;

    /// How many plans are in each state, as `(state, count)` pairs (states with no plan may be
    /// left out). For metrics; backends that cannot answer cheaply keep this default.
    async fn count_plans_by_state(&self) -> StoreResult<Vec<(String, u64)>> {
        Err(StoreError::Backend(
            "counting plans by state is not supported by this store".into(),
        ))
    }

    /// Reviews of every plan (the review index, kept by the log's writes: see
    /// [`Append::reviews`]), oldest opened first (ties in a stable order), optionally only
    /// those in `state` and of one plan. An unknown plan lists nothing.
    async fn list_reviews(
        &self,
        state: Option<&str>,
        plan_id: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<ReviewRow>>;

    /// How many reviews are `open` and the oldest one's `opened_at`.
    async fn open_reviews(&self) -> StoreResult<OpenReviews>;
}

/// Leases: which engine node drives a plan. The [`Fence`] a claim returns is checked by every
/// [`EventLog::append`] that carries it.
#[async_trait]
pub trait Leases: Send + Sync + 'static {
    /// Takes or renews the lease of `node` on a plan until `now + ttl_ms`. Renewal by the owner
    /// keeps the token; a takeover after expiry increases it. `LeaseHeld` while another node's
    /// lease runs; `NotFound` for an unknown plan.
    async fn claim(
        &self,
        plan_id: &str,
        node: &str,
        ttl_ms: u64,
        now: Micros,
    ) -> StoreResult<Fence>;

    /// [`Leases::claim`], answering besides the fence the id of the plan's first event (seq
    /// 1) as the claim's own transaction saw it: the plan's incarnation. Event ids are never
    /// reused, so a plan deleted and registered again under the same id has another, and a
    /// caller that kept a plan's state from its registration can tell whether the plan it
    /// claimed is still that one. `None` when the store does not say (this default): the
    /// caller then reads the plan back.
    async fn claim_incarnation(
        &self,
        plan_id: &str,
        node: &str,
        ttl_ms: u64,
        now: Micros,
    ) -> StoreResult<(Fence, Option<u64>)> {
        Ok((self.claim(plan_id, node, ttl_ms, now).await?, None))
    }

    /// Gives a lease up (no-op when the fence is stale).
    async fn release(&self, plan_id: &str, fence: &Fence) -> StoreResult<()>;

    /// Renews, until `now + ttl_ms`, every lease of `plans` (plan id, token) that `node` still
    /// holds under that token and has not released: exactly the leases whose fence an append
    /// would still accept, expired or not (nobody took them over). Answers the plan ids
    /// renewed; a plan left out was taken over, released or deleted, and its driver must stop.
    /// One call per node and renewal period, whatever the number of plans: a backend writes
    /// them together where it can. This default claims each plan in turn (a claim by the
    /// holder keeps the token, so a changed token means the lease moved).
    async fn renew(
        &self,
        node: &str,
        plans: &[(String, u64)],
        ttl_ms: u64,
        now: Micros,
    ) -> StoreResult<Vec<String>> {
        let mut renewed = Vec::with_capacity(plans.len());
        for (plan_id, token) in plans {
            match self.lease(plan_id).await? {
                Some(l) if l.owner != node || l.token != *token || l.released => continue,
                _ => {}
            }
            match self.claim(plan_id, node, ttl_ms, now).await {
                Ok(fence) if fence.token == *token => renewed.push(plan_id.clone()),
                Ok(_) | Err(StoreError::LeaseHeld { .. }) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(renewed)
    }

    /// The plan's lease as stored, live or not (`None` when it was never claimed).
    async fn lease(&self, plan_id: &str) -> StoreResult<Option<LeaseRow>> {
        let _ = plan_id;
        Ok(None)
    }

    /// Takes over, for `node` until `now + ttl_ms`, up to `limit` plans whose index state is one
    /// of `states` and whose lease expired without being released (its holder stopped renewing:
    /// it died, hung, or lost the store), answering each with its new fence (token increased).
    /// Rows another node is taking over at the same moment are skipped, never waited for
    /// (`FOR UPDATE SKIP LOCKED` on PostgreSQL). A store only one process opens keeps this
    /// default, which takes nothing: its one process recovers its plans when it opens.
    async fn take_over(
        &self,
        node: &str,
        ttl_ms: u64,
        states: &[&str],
        limit: usize,
        now: Micros,
    ) -> StoreResult<Vec<(String, Fence)>> {
        let _ = (node, ttl_ms, states, limit, now);
        Ok(Vec::new())
    }
}

/// Snapshots: materialised states of a plan at a seq, so loading needs no full replay. A cache
/// of the log, never the truth. A store keeps every snapshot it is given until the plan is
/// deleted (the engine spaces them), so the state at any position, however old, replays from
/// the nearest snapshot before it.
#[async_trait]
pub trait Snapshots: Send + Sync + 'static {
    /// Saves a materialised state of the plan at `seq` so loading needs no full replay.
    /// Best effort for callers: losing one only costs replay time.
    async fn put_snapshot(&self, plan_id: &str, seq: u64, data: Vec<u8>) -> StoreResult<()>;

    /// The newest snapshot with `seq <= at_or_before`.
    async fn get_snapshot(
        &self,
        plan_id: &str,
        at_or_before: u64,
    ) -> StoreResult<Option<(u64, Vec<u8>)>>;
}

/// API tokens, stored by hash.
#[async_trait]
pub trait Tokens: Send + Sync + 'static {
    /// Stores a new token. `Invalid` when its id or hash is already taken.
    async fn create_token(&self, token: TokenRow) -> StoreResult<()>;

    /// Every token, revoked ones included, oldest first.
    async fn list_tokens(&self) -> StoreResult<Vec<TokenRow>>;

    /// Marks a token revoked. `Ok(false)` when no live token has that id.
    async fn revoke_token(&self, id: &str, at: Micros) -> StoreResult<bool>;

    /// The token with this hash, revoked or not.
    async fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRow>>;
}

/// Named positions kept durably (e.g. the last event id a webhook delivered).
#[async_trait]
pub trait Cursors: Send + Sync + 'static {
    /// A named position.
    async fn get_cursor(&self, name: &str) -> StoreResult<Option<u64>>;

    /// Sets a named position durably.
    async fn set_cursor(&self, name: &str, value: u64) -> StoreResult<()>;

    /// Takes or renews, for `node` until `ttl_ms` from now, the right to advance the cursor
    /// `name` (a webhook is delivered by one node at a time). `Ok(false)` while another node's
    /// lease on it runs. A store only one process opens keeps this default: always granted.
    async fn lease_cursor(&self, name: &str, node: &str, ttl_ms: u64) -> StoreResult<bool> {
        let _ = (name, node, ttl_ms);
        Ok(true)
    }
}

/// The engine nodes sharing a store, and what they share besides plans.
#[async_trait]
pub trait Nodes: Send + Sync + 'static {
    /// Records `node_id`'s heartbeat now (by the store's clock), inserting the node the first
    /// time, with its address and start time.
    async fn heartbeat(
        &self,
        node_id: &str,
        address: Option<&str>,
        started_at: Micros,
    ) -> StoreResult<()>;

    /// The nodes known, by id, with the plans each owns.
    async fn list_nodes(&self) -> StoreResult<Vec<NodeRow>>;

    /// A secret every node of the store can read and nothing else can (created once, on first
    /// use): nodes authenticate the requests they forward to each other with it.
    async fn cluster_secret(&self) -> StoreResult<String>;
}

/// Named templates: immutable versions of each, the latest of a name answering by default.
#[async_trait]
pub trait Templates: Send + Sync + 'static {
    /// Stores `new.content` as the next version of `new.name` (1 for a new name) and answers it
    /// with `true`. When the content equals the latest version's, stores nothing and answers
    /// the latest with `false`. Either way a deleted name is live again.
    async fn put_template_version(
        &self,
        new: NewTemplateVersion,
    ) -> StoreResult<(TemplateRow, bool)>;

    /// Version `version` of `name` (the latest when `None`), deleted or not.
    async fn get_template(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> StoreResult<Option<TemplateRow>>;

    /// The latest version of every live template, by name; `cursor` is the previous page's
    /// `next_cursor`. `limit == 0` is `Invalid`.
    async fn list_templates(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<TemplateRow>>;

    /// Every version of `name`, oldest first (empty for an unknown name).
    async fn template_versions(&self, name: &str) -> StoreResult<Vec<TemplateRow>>;

    /// Marks `name` deleted at `at`, keeping every version. `Ok(false)` when no live template
    /// has that name.
    async fn delete_template(&self, name: &str, at: Micros) -> StoreResult<bool>;
}

/// Everything a backend keeps, for the code that needs all of it (the engine's handle, the
/// composition root). Implemented for every type that implements each concern, so a backend
/// implements the narrow traits and never this one; callers that need one concern take that
/// trait (`Arc<dyn Tokens>`, `&dyn Cursors`) instead. Object safe: the engine holds an
/// `Arc<dyn Store>`, and an `Arc<dyn Store>` coerces to any one concern's `Arc<dyn …>`.
pub trait Store:
    EventLog + PlanIndex + Leases + Snapshots + Tokens + Cursors + Nodes + Templates
{
}

impl<
        T: EventLog + PlanIndex + Leases + Snapshots + Tokens + Cursors + Nodes + Templates + ?Sized,
    > Store for T
{
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn commit_times_fall_in_their_buckets_and_quantiles_count_from_a_snapshot() {
        let counters = WriterCounters::default();
        // Before the snapshot: slow batches that the quantiles after it must not see.
        for _ in 0..50 {
            counters.busy(9_000_000);
        }
        let earlier = counters.snapshot();
        assert_eq!(counters.snapshot().commit_quantile(&earlier, 0.99), None);
        for _ in 0..98 {
            counters.busy(120_000); // 120 µs: the bucket up to 125 µs
        }
        counters.busy(125_000); // on a bound: still that bucket
        counters.busy(900_000); // 900 µs: the bucket up to 1 ms
        let now = counters.snapshot();
        assert_eq!(now.commit_times[3] - earlier.commit_times[3], 99);
        assert_eq!(now.commit_times[15] - earlier.commit_times[15], 1);
        assert_eq!(
            now.busy - earlier.busy,
            Duration::from_micros(98 * 120 + 125 + 900)
        );
        assert_eq!(
            now.commit_quantile(&earlier, 0.5),
            Some(Duration::from_micros(125))
        );
        assert_eq!(
            now.commit_quantile(&earlier, 0.99),
            Some(Duration::from_micros(125))
        );
        assert_eq!(
            now.commit_quantile(&earlier, 1.0),
            Some(Duration::from_micros(1_000))
        );
        // Longer than every bound: counted, but no bound to name.
        counters.busy(20_000_000_000); // 20 s
        let last = counters.snapshot();
        assert_eq!(last.commit_times[COMMIT_BUCKETS_US.len()], 1);
        assert_eq!(last.commit_quantile(&earlier, 1.0), None);
        assert_eq!(
            last.commit_quantile(&now, 0.5),
            None,
            "the one batch since `now` is beyond the last bound"
        );
    }
}
