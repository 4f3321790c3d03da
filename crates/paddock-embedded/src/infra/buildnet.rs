//! Wiring of template builds: their steps run in containers ([`crate::build_container`]) next
//! to the sandboxes, and reach the package mirrors through the sandbox bridge with egress —
//! the firewall of an internet-enabled sandbox (no host, no private or link-local ranges, no
//! other sandboxes) — rather than through the host's network namespace, where a hostile
//! maintainer script would reach every host-local service and abstract socket.

use std::net::Ipv4Addr;
use std::sync::{Arc, Weak};

use paddock_cgroups::CgroupLimits;
use paddock_infra::{InfraError, InfraResult};

use super::{EmbeddedInfra, Inner};
use crate::build_container::{
    BUILD_MEMORY_BYTES, BUILD_PIDS, BoxError, BuildBox, BuildNetwork, NetLease,
};
use crate::network;

impl EmbeddedInfra {
    /// An address of the bridge's range, marked used.
    pub(super) fn allocate_ip(&self) -> InfraResult<Ipv4Addr> {
        let mut st = self.state();
        let ip = self
            .inner
            .cfg
            .net
            .allocate(&st.used_ips, st.last_ip)
            .map_err(|e| InfraError::Capacity(e.to_string()))?;
        st.used_ips.insert(ip);
        st.last_ip = Some(ip);
        Ok(ip)
    }

    /// How this infrastructure's template builds run their steps.
    pub(super) fn build_box(&self) -> BuildBox {
        let cfg = &self.inner.cfg;
        BuildBox {
            helper_binary: cfg.helper_binary.clone(),
            init_binary: cfg.init_binary.clone(),
            state_root: self.state_root(),
            cgroups: self.inner.cgroups.clone(),
            resolv_conf: cfg.resolv_conf.clone(),
            limits: CgroupLimits {
                cpu_millis: None,
                memory_bytes: Some(BUILD_MEMORY_BYTES),
                pids: Some(BUILD_PIDS),
            },
            network: Some(Arc::new(BridgeNet {
                inner: Arc::downgrade(&self.inner),
                handle: tokio::runtime::Handle::current(),
            })),
            seccomp: self.inner.seccomp.clone(),
        }
    }
}

/// Connects build containers to the bridge. Weak: the catalogue holding it lives in `Inner`.
struct BridgeNet {
    inner: Weak<Inner>,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for BridgeNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BridgeNet")
    }
}

impl BuildNetwork for BridgeNet {
    // Called on a blocking thread (template builds never run on the async workers).
    fn connect(&self, pid: i32) -> Result<Box<dyn NetLease>, BoxError> {
        let inner = self
            .inner
            .upgrade()
            .ok_or("the embedded infrastructure has stopped")?;
        let infra = EmbeddedInfra { inner };
        let ip = infra.allocate_ip()?;
        let lease = BridgeLease {
            infra,
            ip,
            handle: self.handle.clone(),
        };
        let attached =
            self.handle
                .block_on(network::attach(&lease.infra.inner.cfg.net, pid, ip, true));
        match attached {
            Ok(()) => Ok(Box::new(lease)),
            Err(e) => {
                // Undo a half-made attachment and free the address.
                Box::new(lease).release();
                Err(e.into())
            }
        }
    }
}

struct BridgeLease {
    infra: EmbeddedInfra,
    ip: Ipv4Addr,
    handle: tokio::runtime::Handle,
}

impl NetLease for BridgeLease {
    fn release(self: Box<Self>) {
        let net = &self.infra.inner.cfg.net;
        if let Err(e) = self.handle.block_on(network::detach(net, self.ip)) {
            tracing::warn!(ip = %self.ip, error = %e, "cannot detach a build container");
        }
        self.infra.state().used_ips.remove(&self.ip);
    }
}
