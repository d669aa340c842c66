//! The `command` executor: runs a program per attempt, the task JSON on stdin, the output JSON on
//! stdout; a non-zero exit is a failure.

use async_trait::async_trait;

use super::{ExecError, ExecOutput, Executor, StopSignal, Task};

/// Runs `argv` per attempt.
pub struct CommandExecutor {
    pub argv: Vec<String>,
    pub timeout_ms: Option<u64>,
}

#[async_trait]
impl Executor for CommandExecutor {
    async fn execute(&self, _task: Task, _stop: StopSignal) -> Result<ExecOutput, ExecError> {
        Err(ExecError::fatal("command executor: not implemented yet"))
    }
}
