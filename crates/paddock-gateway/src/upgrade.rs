//! The upstream phase for connection upgrades (WebSocket): the handshake on
//! a connection of its own and, once the sandbox agrees (101), a byte pipe
//! both ways until either side closes.
//!
//! Upgraded connections are not pooled (they are never handed back), so this
//! takes its `max_connections` slot itself, and the pipe holds it together
//! with the request's slots for as long as it lives: until a side closes or
//! nothing has moved for the breakers' `upgrade_idle_timeout` ([`crate::pipe`]).

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;

use crate::admit::Admission;
use crate::breaker::Breakers;
use crate::errors::GatewayError;
use crate::pipe::{self, PipeEnd};
use crate::rewrite;
use crate::target::Target;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn forward(
    mut req: Request<Body>,
    addr: SocketAddr,
    path: &str,
    target: &Target,
    breakers: &Breakers,
    mut admission: Admission,
) -> Result<Response, GatewayError> {
    let conn_slot = breakers.connection()?;
    let not_open = || GatewayError::PortNotOpen {
        sandbox: target.sandbox.clone(),
        port: target.port,
    };
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            _ => return Err(not_open()),
        };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream))
        .await
        .map_err(|_| not_open())?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection ended with an error");
        }
    });
    let client_side = hyper::upgrade::on(&mut req);
    rewrite::for_upgrade(&mut req, path)?;
    let mut resp = sender.send_request(req).await.map_err(|_| not_open())?;
    admission.headers_received();
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let sandbox_side = hyper::upgrade::on(&mut resp);
        let sandbox = target.sandbox.clone();
        let request_slot = admission.into_request_slot();
        let idle = breakers.thresholds.upgrade_idle_timeout;
        tokio::spawn(async move {
            let _slots = (request_slot, conn_slot);
            match tokio::try_join!(client_side, sandbox_side) {
                Ok((c, s)) => match pipe::run(TokioIo::new(c), TokioIo::new(s), idle).await {
                    Ok(PipeEnd::Idle) => {
                        tracing::info!(%sandbox, idle_secs = idle.as_secs(), "upgraded connection idle: closed")
                    }
                    Ok(PipeEnd::Closed(..)) => {}
                    Err(e) => tracing::debug!(%sandbox, error = %e, "upgraded connection closed"),
                },
                Err(e) => tracing::debug!(%sandbox, error = %e, "upgrade failed"),
            }
        });
    }
    Ok(resp.map(Body::new))
}
