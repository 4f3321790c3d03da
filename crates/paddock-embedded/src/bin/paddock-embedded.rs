//! A small driver for the embedded infrastructure until the `paddock` CLI exists.
//!
//! ```text
//! paddock-embedded template list
//! paddock-embedded template build NAME
//! paddock-embedded up --runtime BIN [--count N] [--pool N] [--data DIR] [--bridge NAME]
//!                     [--cidr CIDR] [--nft-table NAME] [--veth-prefix P] [--cgroup-parent NAME]
//! ```
//! `up` starts (recovering earlier state), creates `--count` sandboxes, prints one
//! `ready <id> <address>` line per sandbox, then serves until killed.

use std::path::PathBuf;

use anyhow::{Context, bail};
use paddock_embedded::network::Cidr;
use paddock_embedded::{EmbeddedConfig, EmbeddedInfra, TemplateSpec, Templates};
use paddock_infra::{CreateSandbox, Infra};

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> anyhow::Result<()> {
    // The container helper must run before any thread exists.
    if let Some(code) = paddock_embedded::container::run_helper_if_requested() {
        std::process::exit(code);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "paddock_embedded=info,libcontainer=error,libcgroups=error".into()
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = flag(&args, "--runtime")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/local/bin/paddock-runtime".into());
    let mut cfg = EmbeddedConfig::from_env(runtime);
    if let Some(d) = flag(&args, "--data") {
        cfg.data_dir = d.into();
        if std::env::var_os(paddock_embedded::TEMPLATE_CACHE_ENV).is_none() {
            cfg.template_cache = cfg.data_dir.join("templates");
        }
    }
    if let Some(b) = flag(&args, "--bridge") {
        cfg.net.bridge = b;
    }
    if let Some(c) = flag(&args, "--cidr") {
        cfg.net.cidr = c.parse::<Cidr>()?;
    }
    if let Some(t) = flag(&args, "--nft-table") {
        cfg.net.nft_table = t;
    }
    if let Some(p) = flag(&args, "--veth-prefix") {
        cfg.net.veth_prefix = p;
    }
    if let Some(g) = flag(&args, "--cgroup-parent") {
        cfg.cgroup_parent = g;
    }
    let pool: usize = flag(&args, "--pool")
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(0);
    for t in &mut cfg.templates {
        t.pool_size = pool;
    }
    match args.first().map(String::as_str) {
        Some("template") => {
            let t = Templates::new(
                cfg.template_cache.clone(),
                [TemplateSpec::base(), TemplateSpec::code_interpreter()],
            );
            match args.get(1).map(String::as_str) {
                Some("list") => {
                    for s in t.specs() {
                        let built = t.layers(&s.name)?.is_some();
                        println!(
                            "{:24} {:6} {}",
                            s.name,
                            if built { "built" } else { "-" },
                            t.hash(&s.name)?
                        );
                    }
                }
                Some("build") => {
                    let name = args.get(2).context("template build NAME")?;
                    let layers = tokio::task::spawn_blocking({
                        let name = name.clone();
                        move || t.build(&name, &|l| println!("{l}"))
                    })
                    .await??;
                    println!("layers: {layers:?}");
                }
                _ => bail!("usage: template list | template build NAME"),
            }
        }
        Some("up") => {
            let count: usize = flag(&args, "--count")
                .map(|c| c.parse())
                .transpose()?
                .unwrap_or(0);
            let infra = EmbeddedInfra::start(cfg).await?;
            infra.start_pools();
            for _ in 0..count {
                let s = infra
                    .create(CreateSandbox {
                        template: "base".into(),
                        ..Default::default()
                    })
                    .await?;
                println!("ready {} {}", s.id, s.address);
            }
            println!("up");
            tokio::signal::ctrl_c().await?;
            infra.shutdown();
        }
        _ => bail!(
            "usage: paddock-embedded template list|build NAME | up --runtime BIN [--count N] ..."
        ),
    }
    Ok(())
}
