//! Health probes (`/healthz`, `/readyz`) and Prometheus metrics, on their own ports as the
//! chart expects.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::Error;
use crate::context::{Context, Kind};

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Binds now (so a taken port fails start-up) and returns the serving future.
pub async fn serve_health(
    addr: SocketAddr,
    ctx: Arc<Context>,
) -> Result<impl std::future::Future<Output = ()>, Error> {
    let listener = bind(addr).await?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            // Ready once the webhooks serve: followers too, since the webhook Service sends
            // admission requests to every ready replica and a Deployment of 2 must become
            // Available. Leadership is the `paddock_controller_leader` metric.
            get(|State(ctx): State<Arc<Context>>| async move {
                if ctx.is_serving() {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "webhooks not serving yet")
                }
            }),
        )
        .with_state(ctx);
    Ok(async move {
        let _ = axum::serve(listener, app).await;
    })
}

pub async fn serve_metrics(
    addr: SocketAddr,
    ctx: Arc<Context>,
) -> Result<impl std::future::Future<Output = ()>, Error> {
    let listener = bind(addr).await?;
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(ctx): State<Arc<Context>>| async move { render(&ctx) }),
        )
        .with_state(ctx);
    Ok(async move {
        let _ = axum::serve(listener, app).await;
    })
}

fn render(ctx: &Context) -> String {
    let mut out = String::new();
    let families = [
        (
            "reconcile_total",
            "Reconciles by kind.",
            &ctx.metrics.reconciles,
        ),
        (
            "reconcile_errors_total",
            "Failed reconciles by kind.",
            &ctx.metrics.failures,
        ),
    ];
    for (name, help, values) in families {
        out.push_str(&format!("# HELP paddock_controller_{name} {help}\n"));
        out.push_str(&format!("# TYPE paddock_controller_{name} counter\n"));
        for (kind, label) in Kind::ALL {
            let n = values[kind as usize].load(Ordering::Relaxed);
            out.push_str(&format!(
                "paddock_controller_{name}{{kind=\"{label}\"}} {n}\n"
            ));
        }
    }
    out.push_str("# HELP paddock_controller_leader Whether this replica runs the controllers.\n");
    out.push_str("# TYPE paddock_controller_leader gauge\n");
    out.push_str(&format!(
        "paddock_controller_leader {}\n",
        u8::from(ctx.is_ready())
    ));
    out
}
