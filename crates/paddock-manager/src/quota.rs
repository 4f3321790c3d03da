//! Quota checks that hold under concurrent creates: a create reserves its
//! share before the (slow) sandbox creation starts and the reservation lasts
//! until the sandbox is recorded or the create fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::keys::Quota;

/// What one sandbox counts for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub sandboxes: u32,
    pub cpu: u32,
    pub memory_mb: u64,
}

impl Usage {
    /// What one sandbox with `limits` counts for.
    pub fn of_limits(limits: &paddock_infra::Limits) -> Usage {
        Usage {
            sandboxes: 1,
            cpu: limits.cpu_millis.div_ceil(1000),
            memory_mb: limits.memory_bytes >> 20,
        }
    }

    /// `n` times this usage.
    pub fn times(self, n: u32) -> Usage {
        Usage {
            sandboxes: self.sandboxes * n,
            cpu: self.cpu * n,
            memory_mb: self.memory_mb * u64::from(n),
        }
    }

    fn add(self, o: Usage) -> Usage {
        Usage {
            sandboxes: self.sandboxes + o.sandboxes,
            cpu: self.cpu + o.cpu,
            memory_mb: self.memory_mb + o.memory_mb,
        }
    }
    fn sub(self, o: Usage) -> Usage {
        Usage {
            sandboxes: self.sandboxes.saturating_sub(o.sandboxes),
            cpu: self.cpu.saturating_sub(o.cpu),
            memory_mb: self.memory_mb.saturating_sub(o.memory_mb),
        }
    }
}

/// A create that would take a team past one of its key's limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error(
        "quota exceeded: team '{team}' may run at most {max} sandboxes ({used} running or paused)"
    )]
    Sandboxes { team: String, max: u32, used: u32 },
    #[error(
        "quota exceeded: team '{team}' may use at most {max} vCPUs ({used} in use, {wanted} requested)"
    )]
    Cpu {
        team: String,
        max: u32,
        used: u32,
        wanted: u32,
    },
    #[error(
        "quota exceeded: team '{team}' may use at most {max} MiB of memory ({used} MiB in use, {wanted} MiB requested)"
    )]
    Memory {
        team: String,
        max: u64,
        used: u64,
        wanted: u64,
    },
    #[error("quota exceeded: team '{team}' may keep at most {max} snapshots ({used} kept)")]
    Snapshots { team: String, max: u32, used: u32 },
}

/// Whether a team keeping `used` snapshots may take one more.
pub fn snapshot_fits(quota: &Quota, team: &str, used: u32) -> Result<(), QuotaError> {
    match quota.max_snapshots {
        Some(max) if used >= max => Err(QuotaError::Snapshots {
            team: team.to_string(),
            max,
            used,
        }),
        _ => Ok(()),
    }
}

/// Whether `used + wanted` fits `quota`; the error names the limit hit.
pub fn fits(quota: &Quota, team: &str, used: Usage, wanted: Usage) -> Result<(), QuotaError> {
    let total = used.add(wanted);
    let team = team.to_string();
    if let Some(max) = quota.max_sandboxes
        && total.sandboxes > max
    {
        return Err(QuotaError::Sandboxes {
            team,
            max,
            used: used.sandboxes,
        });
    }
    if let Some(max) = quota.max_cpu
        && total.cpu > max
    {
        return Err(QuotaError::Cpu {
            team,
            max,
            used: used.cpu,
            wanted: wanted.cpu,
        });
    }
    if let Some(max) = quota.max_memory_mb
        && total.memory_mb > max
    {
        return Err(QuotaError::Memory {
            team,
            max,
            used: used.memory_mb,
            wanted: wanted.memory_mb,
        });
    }
    Ok(())
}

/// Usage promised to creates still in progress, per team.
#[derive(Default, Clone)]
pub struct Reservations {
    inner: Arc<Mutex<HashMap<String, Usage>>>,
}

/// Gives its reservation back when dropped.
pub struct Reservation {
    owner: Reservations,
    team: String,
    usage: Usage,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut map = self.owner.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = map.get_mut(&self.team) {
            *u = u.sub(self.usage);
            if *u == Usage::default() {
                map.remove(&self.team);
            }
        }
    }
}

impl Reservations {
    /// Reserves `wanted` for `team` if `recorded()` (its existing sandboxes)
    /// plus what is already reserved plus `wanted` fits the quota.
    ///
    /// `recorded` is read under the reservations' lock (audit L3): read before it, a create
    /// that finished in between (recorded its sandbox, then gave its reservation back) would
    /// be counted by neither, and two creates could together overshoot the quota.
    pub fn reserve(
        &self,
        quota: &Quota,
        team: &str,
        recorded: impl FnOnce() -> Usage,
        wanted: Usage,
    ) -> Result<Reservation, QuotaError> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let pending = map.get(team).copied().unwrap_or_default();
        fits(quota, team, recorded().add(pending), wanted)?;
        let e = map.entry(team.to_string()).or_default();
        *e = e.add(wanted);
        Ok(Reservation {
            owner: self.clone(),
            team: team.to_string(),
            usage: wanted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: Usage = Usage {
        sandboxes: 1,
        cpu: 2,
        memory_mb: 512,
    };

    #[test]
    fn concurrent_creates_cannot_overshoot() {
        let q = Quota {
            max_sandboxes: Some(2),
            ..Quota::default()
        };
        let r = Reservations::default();
        let a = r.reserve(&q, "t", Usage::default, ONE).unwrap();
        let _b = r.reserve(&q, "t", Usage::default, ONE).unwrap();
        let err = r.reserve(&q, "t", Usage::default, ONE).err().unwrap();
        assert!(matches!(err, QuotaError::Sandboxes { max: 2, .. }), "{err}");
        assert!(err.to_string().contains("at most 2 sandboxes"), "{err}");
        // Another team is not affected.
        assert!(r.reserve(&q, "u", Usage::default, ONE).is_ok());
        drop(a);
        assert!(r.reserve(&q, "t", Usage::default, ONE).is_ok());
    }

    /// Audit L3: the team's recorded usage is read while the reservations are locked, so a
    /// create that records its sandbox and gives back its reservation in between cannot be
    /// missed by both counts.
    #[test]
    fn recorded_usage_is_read_under_the_lock() {
        let q = Quota {
            max_sandboxes: Some(1),
            ..Quota::default()
        };
        let r = Reservations::default();
        let mut locked = false;
        let _a = r
            .reserve(
                &q,
                "t",
                || {
                    locked = r.inner.try_lock().is_err();
                    Usage::default()
                },
                ONE,
            )
            .unwrap();
        assert!(locked, "the usage was read outside the lock");
    }

    #[test]
    fn cpu_and_memory_limits_name_themselves() {
        let q = Quota {
            max_cpu: Some(3),
            ..Quota::default()
        };
        let err = fits(&q, "t", ONE, ONE).unwrap_err();
        assert!(err.to_string().contains("3 vCPUs"), "{err}");
        let q = Quota {
            max_memory_mb: Some(1000),
            ..Quota::default()
        };
        let err = fits(&q, "t", ONE, ONE).unwrap_err();
        assert!(err.to_string().contains("1000 MiB"), "{err}");
        assert!(fits(&Quota::default(), "t", ONE, ONE).is_ok());
    }

    #[test]
    fn snapshots_are_counted_against_their_own_limit() {
        let q = Quota {
            max_snapshots: Some(2),
            ..Quota::default()
        };
        assert!(snapshot_fits(&q, "t", 1).is_ok());
        let err = snapshot_fits(&q, "t", 2).unwrap_err();
        assert!(err.to_string().contains("at most 2 snapshots"), "{err}");
        assert!(snapshot_fits(&Quota::default(), "t", 1000).is_ok());
    }
}
