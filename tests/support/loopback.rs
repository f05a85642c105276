//! Serving a fake on loopback: one place for what every fake server needs.

#![allow(dead_code)]

/// Serves `app` on 127.0.0.1 on a free port until the returned token is cancelled; returns
/// its base URL (`http://127.0.0.1:PORT`) and that token.
pub async fn serve(app: axum::Router) -> (String, tokio_util::sync::CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .unwrap();
    });
    (base, shutdown)
}
