//! Reading a sandbox's runtime log back.

use paddock_infra::{InfraError, InfraResult, SandboxId};

use super::{EmbeddedInfra, internal};

impl EmbeddedInfra {
    /// The body of [`paddock_infra::Infra::logs`].
    pub(super) async fn sandbox_logs(
        &self,
        id: &SandboxId,
    ) -> InfraResult<Vec<paddock_infra::LogLine>> {
        let rec = self.record(id)?;
        if rec.pooled {
            return Err(InfraError::NotFound(id.clone()));
        }
        let path = self.paths(id).log();
        let created = rec.created_at_ms;
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(internal(e)),
            };
            let len = f.metadata().map_err(internal)?.len();
            let skip = len.saturating_sub(crate::logs::MAX_LOG_BYTES);
            f.seek(SeekFrom::Start(skip)).map_err(internal)?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).map_err(internal)?;
            let mut text = String::from_utf8_lossy(&buf).into_owned();
            if skip > 0 {
                // Drop the partial first line of a cut log.
                text = text
                    .split_once('\n')
                    .map(|(_, r)| r.to_string())
                    .unwrap_or_default();
            }
            Ok(crate::logs::parse(&text, created))
        })
        .await
        .map_err(internal)?
    }
}
