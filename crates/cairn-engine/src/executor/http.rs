//! The `http` executor: POSTs the task JSON to a URL; the JSON reply is the output.

use async_trait::async_trait;

use super::{ExecError, ExecOutput, Executor, StopSignal, Task};

/// POSTs each attempt to `url`.
pub struct HttpExecutor {
    pub url: String,
    pub timeout_ms: Option<u64>,
}

#[async_trait]
impl Executor for HttpExecutor {
    async fn execute(&self, _task: Task, _stop: StopSignal) -> Result<ExecOutput, ExecError> {
        Err(ExecError::fatal("http executor: not implemented yet"))
    }
}
