//! Running a command inside a sandbox from the host.

use paddock_infra::{InfraError, InfraResult, SandboxId, SandboxState};

use super::{EmbeddedInfra, blocking, internal};
use crate::container::{self, ExecOutput};

impl EmbeddedInfra {
    /// Runs a command inside a running sandbox (its namespaces, cgroup and capabilities) and
    /// returns its output. For tests and debugging; users go through the runtime's API.
    ///
    /// Caveat: libcontainer 0.7's exec path does not install the seccomp filter (processes the
    /// runtime starts inherit it from the init, these do not).
    pub async fn exec(&self, id: &SandboxId, args: &[&str]) -> InfraResult<ExecOutput> {
        let rec = self.record(id)?;
        if rec.state != SandboxState::Running {
            return Err(InfraError::SandboxFailed {
                id: id.clone(),
                reason: format!("cannot exec in a {} sandbox", rec.state),
            });
        }
        let (root, idc) = (self.state_root(), id.clone());
        let helper = self.inner.cfg.helper_binary.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        blocking(move || container::exec(&helper, &root, idc.as_str(), &args))
            .await?
            .map_err(internal)
    }
}
