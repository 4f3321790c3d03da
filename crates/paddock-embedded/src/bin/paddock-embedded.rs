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
                    t.get(name)?;
                    // Steps run in containers on the bridge: through the infrastructure.
                    let infra = EmbeddedInfra::start(cfg).await?;
                    let layers = infra.build_template(name).await?;
                    println!("layers: {layers:?}");
                }
                _ => bail!("usage: template list | template build NAME"),
            }
        }
        Some("up") => {
            let template = flag(&args, "--template").unwrap_or_else(|| "base".into());
            let count: usize = flag(&args, "--count")
                .map(|c| c.parse())
                .transpose()?
                .unwrap_or(0);
            let infra = EmbeddedInfra::start(cfg).await?;
            infra.start_pools();
            for _ in 0..count {
                let s = infra
                    .create(CreateSandbox {
                        template: template.clone(),
                        ..Default::default()
                    })
                    .await?;
                println!("ready {} {}", s.id, s.address);
            }
            println!("up");
            tokio::signal::ctrl_c().await?;
            infra.shutdown();
        }
        Some("bench") => {
            let n: usize = flag(&args, "--n")
                .map(|c| c.parse())
                .transpose()?
                .unwrap_or(30);
            let idle: usize = flag(&args, "--idle")
                .map(|c| c.parse())
                .transpose()?
                .unwrap_or(100);
            bench(cfg, n, idle).await?;
        }
        _ => bail!(
            "usage: paddock-embedded template list|build NAME | up --runtime BIN [--count N] ... \
             | bench --runtime BIN [--n N] [--idle N]"
        ),
    }
    Ok(())
}

fn percentiles(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{name:34} n={:<4} p50={:8.2} ms  p99={:8.2} ms  min={:8.2} ms  max={:8.2} ms",
        ms.len(),
        at(0.5),
        at(0.99),
        ms[0],
        ms[ms.len() - 1]
    );
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Cold create, warm claim and idle memory, next to `unshare` + `/bin/true`.
async fn bench(mut cfg: EmbeddedConfig, n: usize, idle: usize) -> anyhow::Result<()> {
    use std::time::Instant;
    let req = || CreateSandbox {
        template: "base".into(),
        ..Default::default()
    };
    // Floor: namespaces alone.
    let mut floor = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let st = std::process::Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount",
                "--net",
                "--uts",
                "--ipc",
                "--cgroup",
                "/bin/true",
            ])
            .status()?;
        anyhow::ensure!(st.success(), "unshare failed");
        floor.push(t.elapsed().as_secs_f64() * 1e3);
    }
    for t in &mut cfg.templates {
        t.pool_size = 0;
    }
    let infra = EmbeddedInfra::start(cfg.clone()).await?;
    infra.build_template("base").await?;
    // Warm-up (page cache, first overlay mount).
    let s = infra.create(req()).await?;
    infra.kill(&s.id).await?;
    let (mut cold, mut kill) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        let s = infra.create(req()).await?;
        cold.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        infra.kill(&s.id).await?;
        kill.push(t.elapsed().as_secs_f64() * 1e3);
    }
    infra.shutdown();
    drop(infra);
    // Warm pool: claim, then wait for the refill before the next claim.
    let mut pcfg = cfg.clone();
    for t in &mut pcfg.templates {
        t.pool_size = if t.name == "base" { 2 } else { 0 };
    }
    let infra = EmbeddedInfra::start(pcfg).await?;
    infra.start_pools();
    let mut claim = Vec::new();
    let mut claimed = Vec::new();
    for _ in 0..n {
        while infra.pool_len("base") < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let t = Instant::now();
        let s = infra.create(req()).await?;
        claim.push(t.elapsed().as_secs_f64() * 1e3);
        claimed.push(s.id);
    }
    infra.kill_all().await?;
    drop(infra);
    // Idle memory.
    let net = cfg.net.clone();
    let infra = EmbeddedInfra::start(cfg).await?;
    let before = mem_available_kib();
    let mut ids = Vec::new();
    for _ in 0..idle {
        ids.push(infra.create(req()).await?.id);
    }
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let after = mem_available_kib();
    let mut cg_total = 0u64;
    for id in &ids {
        cg_total += infra.metrics(id).await?.memory_bytes;
    }
    infra.kill_all().await?;
    paddock_embedded::network::teardown_host(&net).await?;

    println!("--- embedded sandbox benchmark ({n} runs; debug/release = build of this binary) ---");
    percentiles("floor: unshare + /bin/true", floor);
    percentiles("cold create -> /health ready", cold);
    percentiles("kill (teardown, leak-free)", kill);
    percentiles("warm pool claim -> ready", claim);
    println!(
        "idle memory, {idle} sandboxes: {:.1} MiB per sandbox by host MemAvailable, {:.1} MiB per sandbox charged to cgroups",
        before.saturating_sub(after) as f64 / 1024.0 / idle as f64,
        cg_total as f64 / (1 << 20) as f64 / idle as f64
    );
    Ok(())
}
