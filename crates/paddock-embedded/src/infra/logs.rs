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
            // The relay rotates the log into `.1`: the newest bytes are the rotated file's
            // tail followed by the current file.
            let (mut buf, mut cut) = read_tail(&path, crate::logs::MAX_LOG_BYTES)?;
            let room = crate::logs::MAX_LOG_BYTES.saturating_sub(buf.len() as u64);
            if room > 0 {
                // The current file was read whole; the rotated one fills the rest.
                let (mut older, older_cut) = read_tail(&crate::logrelay::rotated(&path), room)?;
                cut = older_cut;
                older.extend_from_slice(&buf);
                buf = older;
            }
            let mut text = String::from_utf8_lossy(&buf).into_owned();
            if cut {
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

/// The last `n` bytes of `path` (nothing if it does not exist), and whether some were left out.
fn read_tail(path: &std::path::Path, n: u64) -> InfraResult<(Vec<u8>, bool)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(internal(e)),
    };
    let len = f.metadata().map_err(internal)?.len();
    let skip = len.saturating_sub(n);
    f.seek(SeekFrom::Start(skip)).map_err(internal)?;
    let mut buf = Vec::new();
    f.take(n).read_to_end(&mut buf).map_err(internal)?;
    Ok((buf, skip > 0))
}
