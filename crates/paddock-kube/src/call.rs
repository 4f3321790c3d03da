//! One call to the API server: bounded in time, its failure sorted into "answered with a
//! status" and "no answer" (the manager turns the second into a fast 503, never a hang).

use std::future::Future;
use std::time::Duration;

use paddock_infra::InfraError;

/// How long one call to the API server may take before the API answers 503.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed call to the API server.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The API server answered with this status.
    Status(u16, kube::Error),
    /// No answer (unreachable, timed out): the manager answers 503.
    Down(String),
}

impl From<CallError> for InfraError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Status(_, e) => InfraError::internal(e),
            CallError::Down(msg) => InfraError::Capacity(msg),
        }
    }
}

/// Runs one API call, bounded, with its failure sorted into answered and unanswered.
pub(crate) async fn call<T>(
    fut: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(API_TIMEOUT, fut).await {
        Err(_) => Err(CallError::Down(format!(
            "the Kubernetes API server did not answer within {}s",
            API_TIMEOUT.as_secs()
        ))),
        Ok(Ok(v)) => Ok(v),
        Ok(Err(kube::Error::Api(ae))) => Err(CallError::Status(ae.code, kube::Error::Api(ae))),
        Ok(Err(e)) => Err(CallError::Down(format!(
            "the Kubernetes API server is unreachable: {e}"
        ))),
    }
}
