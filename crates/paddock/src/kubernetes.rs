//! `paddock crds` and `paddock controller`: the Kubernetes mode's CLI surface.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct CrdsArgs {
    /// Write one `agents.kruise.io_<plural>.yaml` per CRD into this directory instead of
    /// printing them all.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    /// Watch only this namespace (and scope the webhooks to it); all namespaces when absent.
    #[arg(long, env = "PADDOCK_NAMESPACE")]
    namespace: Option<String>,
    /// Log level or filter (`info`, `debug`, `paddock_controller=trace,info`).
    #[arg(long, env = "PADDOCK_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Port of the admission webhook server (chart value webhook.port).
    #[arg(long, default_value_t = 9443)]
    webhook_port: u16,
    /// Register the webhooks by URL at this host or IP (a controller running outside the
    /// cluster); the serving certificate is issued for it.
    #[arg(long)]
    webhook_url_host: Option<String>,
    /// Register the webhooks through this Service (`name.namespace`), as in the chart.
    #[arg(long, conflicts_with = "webhook_url_host")]
    webhook_service: Option<String>,
    /// Do not serve or register admission webhooks.
    #[arg(long)]
    disable_webhooks: bool,
    /// Prefix of the webhook configuration names (one controller per prefix).
    #[arg(long, default_value = "paddock-controller")]
    webhook_config_name: String,
    /// Keep the webhook CA and serving certificate in this Secret (in the namespace of
    /// --webhook-service), so that every replica serves the same certificate.
    #[arg(long, requires = "webhook_service")]
    webhook_cert_secret: Option<String>,
    /// Health probes (`/healthz`, `/readyz`; chart value healthProbe.port). `HOST:PORT`, or
    /// `:PORT` for every interface, as the chart passes it.
    #[arg(long, default_value = "0.0.0.0:8081", value_parser = bind_address)]
    health_probe_bind_address: SocketAddr,
    /// Prometheus metrics (chart value metrics.port); `HOST:PORT` or `:PORT`.
    #[arg(long, default_value = "0.0.0.0:8443", value_parser = bind_address)]
    metrics_bind_address: SocketAddr,
    /// Run the controllers only while holding the leader Lease.
    #[arg(long)]
    leader_elect: bool,
    /// Namespace of the leader Lease.
    #[arg(long, default_value = "sandbox-system")]
    leader_elect_namespace: String,
    /// The user the controller acts as, allowed to delete sandbox Pods past the webhook;
    /// asked from the API server (SelfSubjectReview) when absent.
    #[arg(long, env = "SANDBOX_CONTROLLER_USERNAME")]
    controller_username: Option<String>,
    /// Image whose entrypoint is `paddock-runtime`, used to inject the runtime into sandboxes
    /// with `runtimes: [{name: agent-runtime}]` (built by hack/images).
    #[arg(long, default_value = paddock_controller::desired::inject::DEFAULT_RUNTIME_IMAGE)]
    runtime_image: String,
}

/// `HOST:PORT`, or `:PORT` for all IPv4 interfaces (the form the original chart passes).
fn bind_address(s: &str) -> Result<SocketAddr, String> {
    let full;
    let s = match s.strip_prefix(':') {
        Some(port) if !port.contains(':') => {
            full = format!("0.0.0.0:{port}");
            &full
        }
        _ => s,
    };
    s.parse()
        .map_err(|e| format!("{e}: want HOST:PORT or :PORT (e.g. :8081)"))
}

pub fn crds(args: CrdsArgs) -> anyhow::Result<()> {
    match args.out {
        None => print!("{}", paddock_crds::all_crds_yaml()),
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (plural, crd) in paddock_crds::crds() {
                let path = dir.join(format!("agents.kruise.io_{plural}.yaml"));
                std::fs::write(&path, paddock_crds::crd_yaml(&crd))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

pub async fn controller(args: ControllerArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log_level)
                .with_context(|| format!("bad --log-level {:?}", args.log_level))?,
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let webhook = if args.disable_webhooks {
        None
    } else {
        let endpoint = match (args.webhook_url_host, args.webhook_service) {
            (Some(host), _) => paddock_controller::WebhookEndpoint::Url { host },
            (None, Some(svc)) => {
                let (name, namespace) = svc
                    .split_once('.')
                    .context("--webhook-service wants name.namespace")?;
                paddock_controller::WebhookEndpoint::Service {
                    name: name.to_string(),
                    namespace: namespace.to_string(),
                }
            }
            (None, None) => anyhow::bail!(
                "webhooks need --webhook-url-host or --webhook-service (or --disable-webhooks)"
            ),
        };
        Some(paddock_controller::WebhookConfig {
            port: args.webhook_port,
            endpoint,
            config_name: args.webhook_config_name,
            cert_secret: args.webhook_cert_secret,
        })
    };
    let config = paddock_controller::Config {
        namespace: args.namespace,
        webhook,
        health_addr: args.health_probe_bind_address,
        metrics_addr: args.metrics_bind_address,
        leader_election: args
            .leader_elect
            .then_some(paddock_controller::LeaderConfig::new(
                args.leader_elect_namespace,
            )),
        controller_username: args.controller_username,
        runtime_image: args.runtime_image,
    };
    paddock_controller::run(config).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::bind_address;

    #[test]
    fn bind_addresses_take_the_charts_port_only_form() {
        assert_eq!(bind_address(":8081").unwrap().to_string(), "0.0.0.0:8081");
        assert_eq!(
            bind_address("127.0.0.1:9").unwrap().to_string(),
            "127.0.0.1:9"
        );
        assert_eq!(bind_address("[::1]:80").unwrap().to_string(), "[::1]:80");
        for bad in [":", ":x", "8081", ":99999", "::1"] {
            assert!(bind_address(bad).is_err(), "{bad} accepted");
        }
    }
}
