//! `builtin.latch`: a step that holds until something outside the plan releases it, so tests
//! (and demos) hold a step open for exactly as long as they need instead of guessing a sleep.
//!
//! A latch is named by `params.name`. It is released either in process, with [`release`], or by
//! creating a file of that name in the directory named by the `CAIRN_LATCH_DIR` environment
//! variable of the process that runs the step (what a test that starts the real binary does).
//! Once released a latch stays released: every attempt waiting on it returns, and later ones
//! return at once. An attempt asked to stop (cancel, immediate pause) stops waiting and fails
//! retryably, as `builtin.sleep` does.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{ExecError, ExecOutput, Executor, StopSignal, Task};

/// The environment variable naming the directory whose files release latches.
pub const LATCH_DIR_VAR: &str = "CAIRN_LATCH_DIR";

/// How often a held latch looks for its release file.
const FILE_POLL: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Latches {
    /// Per name: released, and how many attempts are waiting on it now.
    state: Mutex<HashMap<String, (bool, usize)>>,
    changed: Notify,
}

fn latches() -> &'static Latches {
    static LATCHES: OnceLock<Latches> = OnceLock::new();
    LATCHES.get_or_init(Latches::default)
}

impl Latches {
    fn update<T>(&self, name: &str, f: impl FnOnce(&mut (bool, usize)) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let answer = f(state.entry(name.to_owned()).or_default());
        drop(state);
        self.changed.notify_waiters();
        answer
    }

    fn get(&self, name: &str) -> (bool, usize) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.get(name).copied().unwrap_or_default()
    }

    /// Waits until `done` holds of the latch `name`.
    async fn until(&self, name: &str, done: impl Fn((bool, usize)) -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Register before looking, so a change in between still wakes us.
            changed.as_mut().enable();
            if done(self.get(name)) {
                return;
            }
            changed.await;
        }
    }
}

/// Releases the latch `name` in this process: every attempt holding on it returns its params,
/// and attempts that reach it later return at once.
pub fn release(name: &str) {
    latches().update(name, |(released, _)| *released = true);
}

/// Resolves once at least one attempt is holding on the latch `name` in this process (it may
/// have been released since). Bound it with a timeout in tests.
pub async fn held(name: &str) {
    latches().until(name, |(_, holders)| holders > 0).await;
}

/// How many attempts are holding on the latch `name` in this process right now.
pub fn holders(name: &str) -> usize {
    latches().get(name).1
}

/// `builtin.latch`: holds until the latch `params.name` is released, then returns the params.
#[derive(Debug, Clone, Default)]
pub struct Latch {
    /// Where release files are looked for; `None`: the directory `CAIRN_LATCH_DIR` names when
    /// the attempt starts, if set.
    dir: Option<PathBuf>,
}

impl Latch {
    /// A latch released by files in `dir` (and in process), whatever the environment says.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Latch {
        Latch {
            dir: Some(dir.into()),
        }
    }
}

/// Counts an attempt as holding for as long as it lives, however it ends.
struct Holding<'a>(&'a str);

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        latches().update(self.0, |(_, holders)| *holders = holders.saturating_sub(1));
    }
}

#[async_trait]
impl Executor for Latch {
    async fn execute(&self, task: Task, mut stop: StopSignal) -> Result<ExecOutput, ExecError> {
        let name = match task.params.get("name").and_then(|v| v.as_str()) {
            Some(name) if valid_name(name) => name.to_owned(),
            _ => {
                return Err(ExecError::fatal(
                    "builtin.latch: params.name must be a non-empty name of letters, digits, \
                     '-', '_' or '.' (not starting with '.')",
                ))
            }
        };
        let dir = self
            .dir
            .clone()
            .or_else(|| std::env::var_os(LATCH_DIR_VAR).map(PathBuf::from));
        let file = dir.map(|dir| dir.join(&name));
        latches().update(&name, |(_, holders)| *holders += 1);
        let _holding = Holding(&name);
        let released = async {
            let in_process = latches().until(&name, |(released, _)| released);
            tokio::pin!(in_process);
            loop {
                if file.as_ref().is_some_and(|f| f.exists()) {
                    return;
                }
                tokio::select! {
                    _ = &mut in_process => return,
                    _ = tokio::time::sleep(FILE_POLL), if file.is_some() => {}
                }
            }
        };
        tokio::select! {
            _ = released => Ok(ExecOutput { output: task.params, scores: None }),
            _ = stop.stopped() => Err(ExecError::retryable(format!("builtin.latch: stopped while holding on {name}"))),
        }
    }
}

/// A name that is one plain file name: nothing that climbs out of the latch directory.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
