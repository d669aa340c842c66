//! The event stream of all plans, in global id order, and subscriptions to it.
//!
//! Plan actors hand their committed events to one publisher task. Commits of different plans
//! finish in any order, so the publisher holds back an event until every smaller id has been
//! published; a gap that stays open (an event some other process committed) is filled from the
//! store. Subscribers therefore see ids strictly increasing, which is what lets any of them resume
//! from "the last id I saw" with nothing lost and nothing repeated.
//!
//! A slow subscriber never slows the engine: the broadcast buffer is bounded, and a subscriber
//! that falls behind is told so ([`Notice::Lagged`]) and catches up from the store.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use cairn_core::Event;
use cairn_store::EventLog;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::convert::from_stored;

/// How long a gap in ids may stay open before the publisher reads the missing events.
const GAP_WAIT: Duration = Duration::from_millis(25);
const PAGE: usize = 1_000;

pub(crate) fn spawn(
    store: Arc<dyn EventLog>,
    first_id: u64,
    capacity: usize,
) -> (
    mpsc::UnboundedSender<Vec<Arc<Event>>>,
    broadcast::Sender<Arc<Event>>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<Arc<Event>>>();
    let (out, _) = broadcast::channel(capacity);
    let sender = out.clone();
    tokio::spawn(async move {
        let mut next = first_id;
        let mut pending: BTreeMap<u64, Arc<Event>> = BTreeMap::new();
        let mut gap_since: Option<Instant> = None;
        loop {
            let deadline = gap_since.map(|t| t + GAP_WAIT);
            tokio::select! {
                batch = rx.recv() => match batch {
                    Some(batch) => {
                        for e in batch {
                            if e.id >= next {
                                pending.insert(e.id, e);
                            }
                        }
                    }
                    None => return,
                },
                _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                    let first = pending.keys().next().copied().unwrap_or(next);
                    let want = (first.saturating_sub(next) as usize).clamp(1, PAGE);
                    if let Ok(rows) = store.read_all_events(next - 1, want).await {
                        for row in rows {
                            if row.id >= next && row.id < first {
                                if let Ok(e) = from_stored(row) {
                                    pending.insert(e.id, Arc::new(e));
                                }
                            }
                        }
                    }
                    // Ids the store does not have were never committed: skip them.
                    if let Some(&lowest) = pending.keys().next() {
                        if lowest > next {
                            next = lowest;
                        }
                    }
                }
            }
            while let Some(entry) = pending.first_entry() {
                if *entry.key() != next {
                    break;
                }
                let e = entry.remove();
                next += 1;
                let _ = sender.send(e);
            }
            gap_since = if pending.is_empty() {
                None
            } else {
                Some(gap_since.unwrap_or_else(Instant::now))
            };
        }
    });
    (tx, out)
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
                    if e.id <= self.last_id || !self.wanted(&e) {
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
