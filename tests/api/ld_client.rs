//! The LaunchDarkly client treats the API's answers as untrusted input: the token goes only
//! to LD_BASE_URL's origin, rate-limit headers cannot make it overflow or hang, and an answer
//! too large is refused rather than read into memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use audithook::sources::launchdarkly::client::{LdClient, LdError, MAX_PAGE_BYTES};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use secrecy::SecretString;

/// Serves `router` on 127.0.0.1:0; returns its base URL.
async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

fn client(base: &str) -> LdClient {
    LdClient::new(base, SecretString::from("api-secret-token".to_owned())).unwrap()
}

#[tokio::test]
async fn a_next_link_to_another_origin_is_refused_and_gets_no_token() {
    let thief_hits = Arc::new(AtomicU64::new(0));
    let hits = thief_hits.clone();
    let thief = serve(axum::Router::new().fallback(move |h: HeaderMap| {
        let hits = hits.clone();
        async move {
            if h.contains_key("authorization") {
                hits.fetch_add(1, Ordering::SeqCst);
            }
            "{}"
        }
    }))
    .await;
    let c = client("http://127.0.0.1:1");
    for href in [
        format!("{thief}/api/v2/auditlog?after=1"),
        "//evil.example/api/v2/auditlog".to_owned(),
        "https://127.0.0.1:1/api/v2/auditlog".to_owned(),
    ] {
        let err = c.resolve(&href).unwrap_err();
        assert!(matches!(err, LdError::ForeignLink { .. }), "{href}: {err}");
        assert!(err.to_string().contains("refusing to send LD_API_TOKEN"));
    }
    // Same origin, relative or absolute, is followed.
    assert_eq!(
        c.resolve("/api/v2/auditlog?_c=1").unwrap(),
        "http://127.0.0.1:1/api/v2/auditlog?_c=1"
    );
    assert!(c.resolve("http://127.0.0.1:1/api/v2/auditlog").is_ok());
    assert_eq!(thief_hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn untrusted_rate_limit_headers_neither_overflow_nor_hang() {
    for retry_after in [
        "1000000000000000000",
        "1e18",
        "inf",
        "NaN",
        "-5",
        "9223372036854775807",
    ] {
        let calls = Arc::new(AtomicU64::new(0));
        let counter = calls.clone();
        let value = retry_after.to_owned();
        let base = serve(axum::Router::new().route(
            "/api/v2/auditlog",
            get(move || {
                let counter = counter.clone();
                let value = value.clone();
                async move {
                    if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                        (
                            StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after", value.clone()), ("x-ratelimit-reset", value)],
                            "{}",
                        )
                            .into_response()
                    } else {
                        r#"{"items":[],"_links":{}}"#.into_response()
                    }
                }
            }),
        ))
        .await;
        let c = client(&base).with_max_rate_limit_wait(Duration::from_millis(700));
        let started = Instant::now();
        let page = tokio::time::timeout(
            Duration::from_secs(10),
            c.get_page(&format!("{base}/api/v2/auditlog?limit=20")),
        )
        .await
        .unwrap_or_else(|_| panic!("Retry-After {retry_after} hung the client"))
        .unwrap();
        assert!(page.items.is_empty());
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{retry_after}");
        assert!(started.elapsed() < Duration::from_secs(3), "{retry_after}");
    }
}

#[tokio::test]
async fn an_answer_larger_than_the_limit_is_refused() {
    let base = serve(axum::Router::new().route(
        "/api/v2/auditlog",
        get(|| async {
            // Streamed without Content-Length: the limit holds while reading.
            let chunk = bytes::Bytes::from(vec![b' '; 1024 * 1024]);
            let chunks = (0..(MAX_PAGE_BYTES / (1024 * 1024) + 2))
                .map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
            axum::body::Body::from_stream(futures_util::stream::iter(chunks))
        }),
    ))
    .await;
    let err = client(&base)
        .get_page(&format!("{base}/api/v2/auditlog"))
        .await
        .unwrap_err();
    assert!(matches!(err, LdError::PageTooLarge), "{err}");
}
