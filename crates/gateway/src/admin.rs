//! The operator's plain-HTTP listener (default 127.0.0.1:9477): `/metrics` (Prometheus text),
//! `/healthz` (the process is alive) and `/readyz` (listening, TUN up, not draining).
//!
//! It is meant for a local scraper or a node agent, so it binds to loopback by default; it shares
//! the request parser and its limits with the TLS side.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tunnel_proto::http::{self, Limits, Method};

use crate::server::Shared;

/// Serves the admin endpoints until the task is cancelled.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                tokio::spawn(handle(Arc::clone(&shared), tcp));
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(sh: Arc<Shared>, mut tcp: TcpStream) {
    let mut buf = BytesMut::with_capacity(1024);
    let limits = Limits {
        max_body: 0,
        ..Limits::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let req = match http::parse_request(&buf, &limits) {
            Ok(Some((req, used))) => {
                buf.advance(used);
                req
            }
            Ok(None) => match tokio::time::timeout_at(deadline, tcp.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => continue,
                _ => return,
            },
            Err(_) => {
                let _ = tcp
                    .write_all(&http::response(
                        400,
                        "Bad Request",
                        &[("Connection", "close")],
                        b"",
                    ))
                    .await;
                return;
            }
        };
        let path = req.path.split('?').next().unwrap_or("");
        let resp = match (&req.method, path) {
            (Method::Get, "/metrics") => http::response(
                200,
                "OK",
                &[("Content-Type", "text/plain; version=0.0.4; charset=utf-8")],
                &sh.metrics.render(),
            ),
            (Method::Get, "/healthz") => {
                http::response(200, "OK", &[("Content-Type", "text/plain")], b"alive\n")
            }
            (Method::Get, "/readyz") => match sh.health.readiness(sh.is_draining()) {
                Ok(()) => http::response(200, "OK", &[("Content-Type", "text/plain")], b"ready\n"),
                Err(why) => http::response(
                    503,
                    "Service Unavailable",
                    &[("Content-Type", "text/plain")],
                    format!("{}\n", why.join("; ")).as_bytes(),
                ),
            },
            _ => http::response(
                404,
                "Not Found",
                &[("Content-Type", "text/plain")],
                b"not found\n",
            ),
        };
        if tcp.write_all(&resp).await.is_err() || req.wants_close() {
            return;
        }
    }
}
