//! A task of the service that stopped before shutdown was asked for: every one of them runs
//! for as long as the service does, so one that ends or panics is a failure, which the
//! service reports (log, `/readyz`) and turns into a non-zero exit for its supervisor.

/// Which task stopped, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{task} stopped: {cause}")]
pub struct TaskFailure {
    pub task: &'static str,
    pub cause: String,
}

impl TaskFailure {
    pub fn new(task: &'static str, cause: impl Into<String>) -> TaskFailure {
        TaskFailure {
            task,
            cause: cause.into(),
        }
    }

    /// A task that returned although nothing asked it to.
    pub fn ended(task: &'static str) -> TaskFailure {
        TaskFailure::new(task, "it ended on its own")
    }

    /// A task that panicked, with the panic's message.
    pub fn panicked(task: &'static str, payload: &(dyn std::any::Any + Send)) -> TaskFailure {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        TaskFailure::new(task, format!("panicked: {message}"))
    }
}
