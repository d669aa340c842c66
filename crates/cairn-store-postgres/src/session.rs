//! The store's dedicated connection (outside the pool): it `LISTEN`s for commit hints and holds
//! the node id's session advisory lock.
//!
//! PostgreSQL delivers a `NOTIFY` at commit, coalesced within a transaction; every hint of
//! another process's commit (not one sent by this store's own writer) wakes the store's
//! [`Notify`] (its current waiters, plus a stored permit for the next one). When
//! The connection listens only while the engine wants hints (`Wanted`: while someone follows
//! its all-plans stream): every listening backend is woken by every commit of every node, a
//! transaction of its own each time, which a node nobody follows need not pay. When hints are
//! wanted again it listens and wakes the `Notify` once, for the commits it did not hear. When
//! the connection drops, the task reconnects with a growing backoff (up to
//! [`MAX_BACKOFF`]), listens again, retakes the node lock, and wakes the `Notify` once, since
//! hints sent while it was away are lost. Dropping the store ends the task and closes the
//! connection, which releases the node lock.

use std::sync::Mutex;
use std::time::Duration;

use cairn_store::{StoreError, StoreResult};
use futures_util::StreamExt;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::pg_error;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(crate) enum Command {
    HoldNode {
        node_id: String,
        /// What the lock's key is hashed from (the node id, namespaced by schema).
        key: String,
        reply: oneshot::Sender<StoreResult<()>>,
    },
}

/// The backend process id of the store's own writer connection (0 before it connects): the
/// commits it notifies are this process's own, which the engine hears of directly, so they
/// wake no one here.
#[derive(Default)]
pub(crate) struct OwnWriter(std::sync::atomic::AtomicI32);

impl OwnWriter {
    pub(crate) fn set(&self, pid: i32) {
        self.0.store(pid, std::sync::atomic::Ordering::Relaxed);
    }

    fn is(&self, pid: i32) -> bool {
        pid != 0 && self.0.load(std::sync::atomic::Ordering::Relaxed) == pid
    }
}

/// Whether the store's engine wants commit hints (wanted from the start), and a wake-up for
/// the session when that changes.
pub(crate) struct Wanted {
    on: std::sync::atomic::AtomicBool,
    changed: Notify,
}

impl Default for Wanted {
    fn default() -> Wanted {
        Wanted {
            on: std::sync::atomic::AtomicBool::new(true),
            changed: Notify::new(),
        }
    }
}

impl Wanted {
    pub(crate) fn set(&self, on: bool) {
        if self.on.swap(on, std::sync::atomic::Ordering::AcqRel) != on {
            // A stored permit: the session sees the change even if it is busy now.
            self.changed.notify_one();
        }
    }

    fn get(&self) -> bool {
        self.on.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// What the session knows that readiness checks should hear, and whether its store's engine
/// wants commit hints.
#[derive(Default)]
pub(crate) struct State {
    problem: Mutex<Option<String>>,
    pub(crate) wanted: Wanted,
}

impl State {
    pub(crate) fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, problem: Option<String>) {
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }
}

fn wake(hint: &Notify) {
    hint.notify_waiters();
    hint.notify_one();
}

/// Takes the node lock; `Ok(false)` when another session holds it.
async fn try_lock(client: &Client, key: &str) -> StoreResult<bool> {
    let row = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
            &[&key],
        )
        .await
        .map_err(|e| pg_error("take the node lock", e))?;
    Ok(row.get(0))
}

fn in_use(node_id: &str) -> StoreError {
    StoreError::Locked(format!("node id {node_id} is in use by another live node"))
}

/// Runs until the store is dropped (its command sender gone).
pub(crate) async fn run(
    config: tokio_postgres::Config,
    channel: String,
    mut commands: mpsc::Receiver<Command>,
    hint: Arc<Notify>,
    state: Arc<State>,
    own: Arc<OwnWriter>,
    ready: oneshot::Sender<StoreResult<()>>,
) {
    let mut ready = Some(ready);
    // The node ids held (id, key), retaken after every reconnect.
    let mut held: Vec<(String, String)> = Vec::new();
    let mut backoff = FIRST_BACKOFF;
    let mut first = true;
    loop {
        let connected = config.connect(NoTls).await;
        let (client, mut connection) = match connected {
            Ok(pair) => pair,
            Err(e) => {
                let e = pg_error("connect the commit-hint connection", e);
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(e));
                    return;
                }
                state.set(Some(format!("{e} (reconnecting)")));
                // Answer what is asked meanwhile, and stop when the store is gone.
                let until = tokio::time::sleep(backoff);
                tokio::pin!(until);
                loop {
                    tokio::select! {
                        _ = &mut until => break,
                        cmd = commands.recv() => match cmd {
                            None => return,
                            Some(Command::HoldNode { reply, .. }) => {
                                let _ = reply.send(Err(StoreError::Unavailable(
                                    "the database cannot be reached to take the node lock".into(),
                                )));
                            }
                        },
                    }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        // Drive the connection, turning notifications into wake-ups; `closed` fires when it
        // ends.
        let (closed_tx, mut closed) = oneshot::channel::<()>();
        let driver_hint = hint.clone();
        let own = own.clone();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    // Another process's commit (this one's own reach its engine directly).
                    Ok(AsyncMessage::Notification(n)) if !own.is(n.process_id()) => {
                        wake(&driver_hint)
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let _ = closed_tx.send(());
        });
        let wanted = &state.wanted;
        let listen = format!("LISTEN {channel}");
        let mut listening = wanted.get();
        let first_listen = if listening {
            client.batch_execute(&listen).await
        } else {
            Ok(())
        };
        if let Err(e) = first_listen {
            let e = pg_error("listen for commit hints", e);
            if let Some(ready) = ready.take() {
                let _ = ready.send(Err(e));
                return;
            }
            state.set(Some(format!("{e} (reconnecting)")));
            drop(client);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        let mut problem = None;
        for (node_id, key) in &held {
            match try_lock(&client, key).await {
                Ok(true) => {}
                Ok(false) => problem = Some(in_use(node_id).to_string()),
                Err(e) => problem = Some(e.to_string()),
            }
        }
        state.set(problem);
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ok(()));
        }
        backoff = FIRST_BACKOFF;
        if !first {
            // Hints sent while the connection was down are lost.
            wake(&hint);
        }
        first = false;
        loop {
            tokio::select! {
                _ = &mut closed => break,
                _ = wanted.changed.notified() => {
                    let want = wanted.get();
                    if want == listening {
                        continue;
                    }
                    let sql = if want { listen.clone() } else { format!("UNLISTEN {channel}") };
                    if let Err(e) = client.batch_execute(&sql).await {
                        state.set(Some(format!(
                            "{} (reconnecting)",
                            pg_error("listen for commit hints", e)
                        )));
                        break;
                    }
                    listening = want;
                    if want {
                        // What was committed while nobody listened.
                        wake(&hint);
                    }
                }
                cmd = commands.recv() => match cmd {
                    None => return,
                    Some(Command::HoldNode { node_id, key, reply }) => {
                        let answer = match try_lock(&client, &key).await {
                            Ok(true) => {
                                if !held.iter().any(|(id, _)| *id == node_id) {
                                    held.push((node_id, key));
                                }
                                Ok(())
                            }
                            Ok(false) => Err(in_use(&node_id)),
                            Err(e) => Err(e),
                        };
                        let _ = reply.send(answer);
                    }
                },
            }
        }
        state.set(Some(
            "the commit-hint connection dropped (reconnecting)".into(),
        ));
        drop(client);
        tokio::time::sleep(backoff).await;
    }
}
