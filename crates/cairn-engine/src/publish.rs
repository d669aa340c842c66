//! The event stream of all plans, in global id order, and subscriptions to it.
//!
//! Plan actors hand their committed events to one publisher task, which publishes them in id
//! order. Both stores assign ids in commit order: a reader that sees id N sees every committed
//! id below N, and an id missing below a stored one belongs to a plan deleted since. So when
//! events arrive with a gap below them (commits of different plans finish in any order, and
//! other nodes commit too), the publisher reads the gap from the store: what the store has is
//! published, what it lacks never will be and is passed over. Nothing is skipped on a timeout
//! guess. (A node alone with its store first gives the actors of the same group commit time to
//! hand their events over, as long as they keep coming ([`GAP_GRACE`] apart, [`GAP_WAIT`] in
//! all), which nearly always fills the gap without a read; a node sharing its store reads at
//! once.) A node sharing its store with other nodes also tails the log: it reads after
//! the last id it published on every commit hint of the store and every [`TAIL_EVERY`], so its
//! subscribers get every node's events. Local commits that arrive in order are published
//! directly, without a read.
//!
//! Subscribers therefore see ids strictly increasing, which is what lets any of them resume
//! from "the last id I saw" with nothing lost and nothing repeated.
//!
//! Ordering costs reads, and in a cluster decoding every other node's events: the publisher
//! does that work only while someone follows the ordered stream. With nobody subscribed it
//! **rests**: what arrives is dropped and its position remembered (every id up to a committed
//! event's is committed or gone, since ids are given in commit order), and while tailing it
//! reads only the store's last id now and then (and tells the store it wants no commit hints,
//! which on PostgreSQL spares every commit of every node a wake-up of this node's listening
//! connection and its backend). A subscription wakes it; it then publishes
//! from the remembered position on, reading from the store whatever it dropped meanwhile, so
//! a subscriber still gets every event committed after it subscribed (and maybe a few from
//! just before). Besides the ordered stream, every event this engine commits goes at once to
//! the **local** stream, in the order its commits finish (each plan's in seq order): what a
//! consumer of this node's own work, such as the metrics, reads without making anyone order
//! or decode the other nodes' events.
//!
//! A slow subscriber never slows the engine: the broadcast buffer is bounded, and a subscriber
//! that falls behind is told so ([`Notice::Lagged`]) and catches up from the store.
//!
//! The queue from the actors to the publisher is bounded too ([`QUEUE`] commits): when it is
//! full, a commit's events are not queued; the range of their ids is noted instead, and the
//! publisher reads those ids from the log, which holds them (they are committed before they are
//! handed over). Only they are read and decoded: the commits still queued are not read again.
//! (Past [`LOST_KEPT`] ranges noted, it reads the log after the last id it published instead.)
//! So a publisher that falls behind costs reads, never unbounded memory, and loses nothing.
//! The local stream is fed by the actors' side of the queue itself, so it misses nothing either.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use cairn_core::Event;
use cairn_store::EventLog;
use tokio::sync::{broadcast, mpsc, Notify};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::convert::from_stored;

const PAGE: usize = 1_000;
/// Commits queued for the publisher at most; beyond, it reads them from the store.
pub(crate) const QUEUE: usize = 1_024;
/// How often a node sharing its store reads the log for other nodes' events, hint or not.
pub(crate) const TAIL_EVERY: Duration = Duration::from_millis(200);
/// How long a node alone with its store waits for the next events while a gap is open before
/// it reads the store for it, and how long at most in all.
const GAP_GRACE: Duration = Duration::from_millis(2);
const GAP_WAIT: Duration = Duration::from_millis(10);
/// How long after a failed read of the store the publisher tries again.
const RETRY: Duration = Duration::from_millis(100);
/// Id ranges of commits turned away by the full queue, noted at most; past them, the publisher
/// reads the log after its position instead (see [`Lost`]).
const LOST_KEPT: usize = 4_096;
/// Noted ranges this close are read together (the ids between are other commits').
const LOST_JOIN: u64 = 32;

/// The commits the full queue turned away since the publisher last looked: their ids' ranges
/// (first, last), or, past [`LOST_KEPT`] of them, only that there were more.
#[derive(Default)]
struct Lost {
    ranges: Vec<(u64, u64)>,
    more: bool,
}

type SharedLost = Arc<std::sync::Mutex<Lost>>;

impl Lost {
    fn any(&self) -> bool {
        !self.ranges.is_empty() || self.more
    }
}

fn noted(lost: &SharedLost) -> std::sync::MutexGuard<'_, Lost> {
    lost.lock().unwrap_or_else(|p| p.into_inner())
}

/// How the publisher follows commits made by other processes.
pub(crate) struct Tail {
    /// Notified (coalesced) when another process may have committed.
    pub(crate) hint: Option<Arc<Notify>>,
    pub(crate) every: Duration,
}

/// The actors' side of the publisher: committed events, in a bounded queue.
pub(crate) struct Queue {
    tx: mpsc::Sender<Vec<Arc<Event>>>,
    /// Notified when a commit did not fit in the queue: the publisher reads it from the log.
    overflow: Arc<Notify>,
    /// Which commits did not fit.
    lost: SharedLost,
    /// The local stream, fed here so that it misses nothing when the queue is full.
    local: Local,
}

impl Queue {
    /// Hands committed events to the local stream and to the publisher, or, when the
    /// publisher's queue is full, tells it to read them from the store.
    pub(crate) fn push(&self, events: Vec<Arc<Event>>) {
        if let Some(local) = self.local.get() {
            for e in &events {
                // Sent whether or not anyone listens (a send to nobody costs next to nothing).
                let _ = local.send(e.clone());
            }
        }
        if let Err(mpsc::error::TrySendError::Full(events)) = self.tx.try_send(events) {
            let ids = events.iter().map(|e| e.id);
            if let (Some(first), Some(last)) = (ids.clone().min(), ids.max()) {
                let mut lost = noted(&self.lost);
                if lost.ranges.len() < LOST_KEPT {
                    lost.ranges.push((first, last));
                } else {
                    lost.more = true;
                }
            }
            self.overflow.notify_one();
        }
    }
}

/// The streams the publisher feeds.
pub(crate) struct Streams {
    /// Every event, in global id order (every node's, in a cluster).
    all: broadcast::Sender<Arc<Event>>,
    /// The events this engine committed, as their commits finish.
    local: Local,
    /// Wakes a resting publisher when someone subscribes to `all`.
    wake: Arc<Notify>,
    /// The ring's capacity, for the local stream made on its first subscription.
    capacity: usize,
}

/// The local stream's sender, made when it is first subscribed to: its ring (32 bytes a slot,
/// `stream_buffer` slots, half a megabyte by default) is allocated whole, and most processes
/// (a `cairn run`, an embedding program) never read it. An event committed before the first
/// subscription is one that subscription would not have seen anyway.
type Local = Arc<std::sync::OnceLock<broadcast::Sender<Arc<Event>>>>;

impl Streams {
    /// A receiver of the ordered stream; the publisher stops resting, if it was.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        let rx = self.all.subscribe();
        self.wake.notify_one();
        rx
    }

    /// A receiver of this engine's own events.
    pub(crate) fn subscribe_local(&self) -> broadcast::Receiver<Arc<Event>> {
        self.local
            .get_or_init(|| broadcast::channel(self.capacity).0)
            .subscribe()
    }
}

pub(crate) fn spawn(
    store: Arc<dyn EventLog>,
    first_id: u64,
    capacity: usize,
    tail: Option<Tail>,
) -> (Queue, Streams) {
    let (tx, rx) = mpsc::channel::<Vec<Arc<Event>>>(QUEUE);
    let overflow = Arc::new(Notify::new());
    let lost = SharedLost::default();
    let (out, _) = broadcast::channel(capacity);
    let local = Local::default();
    let wake = Arc::new(Notify::new());
    let publisher = Publisher {
        store,
        out: out.clone(),
        next: first_id,
        pending: BTreeMap::new(),
        lost: lost.clone(),
    };
    tokio::spawn(publisher.run(rx, tail, wake.clone(), overflow.clone()));
    (
        Queue {
            tx,
            overflow,
            lost,
            local: local.clone(),
        },
        Streams {
            all: out,
            local,
            wake,
            capacity,
        },
    )
}

struct Publisher {
    store: Arc<dyn EventLog>,
    out: broadcast::Sender<Arc<Event>>,
    /// The id to publish next: every smaller one is published or known not to exist.
    next: u64,
    /// Events at or above `next` waiting for the ids below them.
    pending: BTreeMap<u64, Arc<Event>>,
    /// The commits the full queue turned away, to read from the store.
    lost: SharedLost,
}

impl Publisher {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Vec<Arc<Event>>>,
        tail: Option<Tail>,
        wake: Arc<Notify>,
        overflow: Arc<Notify>,
    ) {
        let hint = tail.as_ref().and_then(|t| t.hint.clone());
        let every = tail.as_ref().map(|t| t.every);
        let mut tail_at = every.map(|e| Instant::now() + e);
        let mut retry_at: Option<Instant> = None;
        // Whether the store was last told that hints are wanted (it starts wanting them).
        let mut hinted = true;
        loop {
            let mut read_tail = false;
            let mut read_lost = false;
            let mut polled = false;
            tokio::select! {
                batch = rx.recv() => match batch {
                    Some(batch) => {
                        self.take(batch);
                        // Whatever else is queued: fewer gaps to read.
                        while let Ok(batch) = rx.try_recv() {
                            self.take(batch);
                        }
                    }
                    None => return,
                },
                _ = async { hint.as_ref().expect("guarded").notified().await }, if hint.is_some() => {
                    read_tail = true;
                }
                // A commit that did not fit in the queue: it is in the store.
                _ = overflow.notified() => {
                    while let Ok(batch) = rx.try_recv() {
                        self.take(batch);
                    }
                    read_lost = true;
                }
                _ = async { tokio::time::sleep_until(tail_at.expect("guarded")).await }, if tail_at.is_some() => {
                    read_tail = true;
                    polled = true;
                    tail_at = every.map(|e| Instant::now() + e);
                }
                _ = async { tokio::time::sleep_until(retry_at.expect("guarded")).await }, if retry_at.is_some() => {
                    retry_at = None;
                }
                // Someone subscribed: what other nodes committed meanwhile is read at once.
                _ = wake.notified() => read_tail = tail.is_some(),
            }
            let followed = self.out.receiver_count() > 0;
            if hint.is_some() && followed != hinted {
                // Hints are for ordering other nodes' events: wanted only while followed.
                // (Waking again, the store notifies the hint, and the tail is read.)
                self.store.want_commit_hints(followed);
                hinted = followed;
            }
            if !followed {
                self.rest(polled).await;
                continue;
            }
            // Also what a failed read noted again: tried with the next round.
            if read_lost || noted(&self.lost).any() {
                match self.read_lost().await {
                    Ok(more) => read_tail |= more,
                    Err(e) => {
                        warn!(error = %e, "cannot read the event log to publish in order; trying again");
                        retry_at = Some(Instant::now() + RETRY);
                    }
                }
            }
            self.flush();
            if !read_tail && !self.pending.is_empty() {
                // A gap: the events below it are usually another actor's commit on its way
                // here. Let it arrive before reading the store for it.
                tokio::task::yield_now().await;
                while let Ok(batch) = rx.try_recv() {
                    self.take(batch);
                }
                self.flush();
                // On a node alone with its store, every id below a local commit's is another
                // local commit (or a deleted plan's): the actors of one group commit hear of
                // it together and hand their events over within moments, so they get a short
                // while more before the store is read. (A node sharing its store reads at
                // once: its gaps are often other nodes' commits, which never come here.)
                // Events keep arriving while they hand over (a big commit wakes hundreds of
                // actors), so the wait lasts while they do, up to `GAP_WAIT`.
                if tail.is_none() {
                    let deadline = Instant::now() + GAP_WAIT;
                    let mut idle_until = Instant::now() + GAP_GRACE;
                    // After a flush, anything pending sits above a gap.
                    while !self.pending.is_empty() {
                        match tokio::time::timeout_at(idle_until.min(deadline), rx.recv()).await {
                            Ok(Some(batch)) => {
                                self.take(batch);
                                while let Ok(batch) = rx.try_recv() {
                                    self.take(batch);
                                }
                                self.flush();
                                idle_until = Instant::now() + GAP_GRACE;
                            }
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
            }
            let read = if read_tail {
                self.read_store(None).await
            } else {
                match self.pending.keys().next().copied() {
                    Some(lowest) => self.read_store(Some(lowest)).await,
                    None => Ok(()),
                }
            };
            if let Err(e) = read {
                // Nothing is passed over on a failed read: it is tried again shortly.
                warn!(error = %e, "cannot read the event log to publish in order; trying again");
                retry_at = Some(Instant::now() + RETRY);
            }
        }
    }

    /// Nobody follows the ordered stream: drops what waits, remembering the position after it
    /// (every id below a committed one is committed or gone), and, when `poll`, moves that
    /// position to the store's last id, so that a subscriber arriving later is served from
    /// about where the log stood when it arrived, not from long before.
    async fn rest(&mut self, poll: bool) {
        if let Some((&last, _)) = self.pending.last_key_value() {
            self.next = self.next.max(last + 1);
        }
        self.pending.clear();
        let lost = std::mem::take(&mut *noted(&self.lost));
        if let Some(last) = lost.ranges.iter().map(|&(_, last)| last).max() {
            self.next = self.next.max(last + 1);
        }
        if !poll {
            return;
        }
        match self.store.last_event_id().await {
            // Only if nobody subscribed during the read: a subscriber's events are those
            // committed after it subscribed, which a last id read before then precedes.
            Ok(last) if self.out.receiver_count() == 0 => self.next = self.next.max(last + 1),
            Ok(_) => {}
            // The position stays where it was: a subscriber then gets more, never less.
            Err(e) => debug!(error = %e, "cannot read the log's last id while resting"),
        }
    }

    fn take(&mut self, batch: Vec<Arc<Event>>) {
        for e in batch {
            if e.id >= self.next {
                self.pending.insert(e.id, e);
            }
        }
    }

    /// Reads the commits the full queue turned away into `pending` (their ranges merged where
    /// close; what is published or pending already is not decoded again). True if more were
    /// turned away than noted: the caller then reads the log after its position. A failed read
    /// leaves the ranges noted, for the next try.
    async fn read_lost(&mut self) -> Result<bool, crate::EngineError> {
        let Lost { mut ranges, more } = std::mem::take(&mut *noted(&self.lost));
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (first, last) in ranges {
            match merged.last_mut() {
                Some(m) if first <= m.1.saturating_add(LOST_JOIN) => m.1 = m.1.max(last),
                _ => merged.push((first, last)),
            }
        }
        for (i, &(first, last)) in merged.iter().enumerate() {
            let mut after = first.max(self.next).saturating_sub(1);
            while after < last {
                let want = usize::try_from(last - after).unwrap_or(PAGE).min(PAGE);
                let rows = match self.store.read_all_events(after, want).await {
                    Ok(rows) => rows,
                    Err(e) => {
                        // Noted again, with what was not read yet.
                        let mut lost = noted(&self.lost);
                        lost.ranges.push((after + 1, last));
                        lost.ranges.extend_from_slice(&merged[i + 1..]);
                        lost.more |= more;
                        return Err(e.into());
                    }
                };
                let n = rows.len();
                for row in rows {
                    after = row.id;
                    if row.id > last {
                        break;
                    }
                    if row.id >= self.next && !self.pending.contains_key(&row.id) {
                        let id = row.id;
                        self.pending.insert(id, Arc::new(from_stored(row)?));
                    }
                }
                if n < want {
                    // The rest of the range is gone (its plans deleted since).
                    break;
                }
            }
        }
        Ok(more)
    }

    /// Publishes the pending events that continue the stream.
    fn flush(&mut self) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.next {
                break;
            }
            let e = entry.remove();
            self.next += 1;
            let _ = self.out.send(e);
        }
    }

    /// Reads the store after the last published id and publishes what it holds, in order: up to
    /// `below` (a pending id, so every id under it is committed or gone), or to its end.
    async fn read_store(&mut self, below: Option<u64>) -> Result<(), crate::EngineError> {
        loop {
            if below.is_some_and(|b| self.next >= b) {
                break;
            }
            let want = match below {
                Some(b) => ((b - self.next) as usize).clamp(1, PAGE),
                None => PAGE,
            };
            let rows = self.store.read_all_events(self.next - 1, want).await?;
            let n = rows.len();
            let mut end = None;
            for row in rows {
                if below.is_some_and(|b| row.id >= b) {
                    end = Some(row.id);
                    break;
                }
                if row.id < self.next {
                    continue;
                }
                let id = row.id;
                let e = match self.pending.remove(&id) {
                    Some(e) => e,
                    None => Arc::new(from_stored(row)?),
                };
                // Ids the store does not have below this one were deleted with their plan.
                self.next = id;
                self.pending.insert(id, e);
                self.flush();
            }
            if end.is_some() || n < want {
                // Everything below `below` that exists was read: the rest is gone.
                if let Some(b) = below {
                    self.next = self.next.max(b);
                }
                break;
            }
        }
        self.flush();
        Ok(())
    }
}

/// What a subscription yields.
#[derive(Debug, Clone)]
pub enum Notice {
    Event(Arc<Event>),
    /// The subscriber fell behind the live stream and missed events; a resumable subscription
    /// catches up from the store by itself right after telling.
    Lagged {
        missed: u64,
        last_id: u64,
    },
}

/// A subscription to the event stream of all plans or of one plan.
pub struct Subscription {
    store: Arc<dyn EventLog>,
    rx: broadcast::Receiver<Arc<Event>>,
    plan: Option<String>,
    last_id: u64,
    /// Reading past events from the store before switching to the live stream.
    catching_up: bool,
    backlog: VecDeque<Arc<Event>>,
    resumable: bool,
    /// Ids strictly increase (the ordered stream); false for the local stream, whose events
    /// come as their commits finish.
    ordered: bool,
}

impl Subscription {
    pub(crate) fn new(
        store: Arc<dyn EventLog>,
        rx: broadcast::Receiver<Arc<Event>>,
        plan: Option<String>,
        after: Option<u64>,
    ) -> Subscription {
        Subscription {
            store,
            rx,
            plan,
            last_id: after.unwrap_or(0),
            catching_up: after.is_some(),
            backlog: VecDeque::new(),
            resumable: after.is_some(),
            ordered: true,
        }
    }

    /// A subscription to the local stream: this engine's own events, live.
    pub(crate) fn local(
        store: Arc<dyn EventLog>,
        rx: broadcast::Receiver<Arc<Event>>,
    ) -> Subscription {
        Subscription {
            ordered: false,
            ..Subscription::new(store, rx, None, None)
        }
    }

    /// The global id of the last event yielded (or the starting point).
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    fn wanted(&self, e: &Event) -> bool {
        self.plan.as_deref().is_none_or(|p| p == e.plan_id)
    }

    /// The next event, or a lag notice. `None` when the engine is gone.
    pub async fn next(&mut self) -> Option<Notice> {
        loop {
            if let Some(e) = self.backlog.pop_front() {
                self.last_id = e.id;
                return Some(Notice::Event(e));
            }
            if self.catching_up {
                let rows = match self.store.read_all_events(self.last_id, PAGE).await {
                    Ok(rows) => rows,
                    Err(_) => {
                        self.catching_up = false;
                        continue;
                    }
                };
                if rows.len() < PAGE {
                    self.catching_up = false;
                }
                for row in rows {
                    let id = row.id;
                    if let Ok(e) = from_stored(row) {
                        if self.wanted(&e) {
                            self.backlog.push_back(Arc::new(e));
                        }
                    }
                    // Skip what was read even when filtered out.
                    if self.backlog.is_empty() {
                        self.last_id = id;
                    }
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(e) => {
                    if (self.ordered && e.id <= self.last_id) || !self.wanted(&e) {
                        continue;
                    }
                    self.last_id = e.id;
                    return Some(Notice::Event(e));
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    if self.resumable {
                        self.catching_up = true;
                    }
                    return Some(Notice::Lagged {
                        missed,
                        last_id: self.last_id,
                    });
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::event::EventKind;
    use cairn_core::time::Timestamp;
    use cairn_store::{Append, CreatePlan};
    use cairn_store_sqlite::{SqliteOptions, SqliteStore};

    fn started(seq: u64) -> Event {
        Event {
            id: 0,
            seq,
            plan_id: "p".into(),
            at: Timestamp::from_micros(1_000 + seq as i64),
            actor: "test".into(),
            kind: EventKind::PlanStarted {
                reason: Some(format!("commit {seq}")),
            },
            checkpoint: None,
        }
    }

    /// A commit the full queue turns away is read from the store, and only it: the commits still
    /// queued, and those committed but not handed over yet, are published as they are handed
    /// over, not read and decoded. (The runtime has one thread, so the publisher runs only once
    /// the commits are handed over.)
    #[tokio::test(flavor = "current_thread")]
    async fn commits_the_full_queue_turns_away_are_read_and_only_they() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn EventLog> = Arc::new(
            SqliteStore::open(&dir.path().join("x.db"), SqliteOptions::default()).unwrap(),
        );
        // `QUEUE` commits fit, 5 do not, and 3 more are handed over later.
        let commits = QUEUE as u64 + 5 + 3;
        let mut stored = store
            .create_plan(CreatePlan {
                plan_id: "p".into(),
                created_at: 1,
                state: "running".into(),
                events: vec![crate::convert::to_new(&started(1))],
                reviews: Vec::new(),
            })
            .await
            .unwrap();
        for seq in 2..=commits {
            stored.extend(
                store
                    .append(Append {
                        plan_id: "p".into(),
                        expected_seq: seq - 1,
                        fence: None,
                        state: None,
                        events: vec![crate::convert::to_new(&started(seq))],
                        reviews: Vec::new(),
                    })
                    .await
                    .unwrap(),
            );
        }
        let handed: Vec<Arc<Event>> = stored
            .iter()
            .map(|s| {
                let mut e = started(s.seq);
                e.id = s.id;
                Arc::new(e)
            })
            .collect();
        let (queue, streams) = spawn(store.clone(), handed[0].id, 4 * QUEUE, None);
        let mut rx = streams.subscribe();
        let later = handed.len() - 3;
        for e in &handed[..later] {
            queue.push(vec![e.clone()]);
        }
        for (i, want) in handed.iter().enumerate() {
            if i == later {
                for e in &handed[later..] {
                    queue.push(vec![e.clone()]);
                }
            }
            let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("the publisher publishes every commit")
                .expect("no lag");
            assert_eq!(*got, **want, "event {i} in order");
            // Only the commits turned away were read.
            let read = (QUEUE..later).contains(&i);
            assert_eq!(Arc::ptr_eq(&got, want), !read, "event {i}");
        }
        assert!(rx.try_recv().is_err(), "nothing published twice");
    }
}
