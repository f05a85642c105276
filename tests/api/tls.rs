//! audithook serving HTTPS itself (`AUDITHOOK_TLS_CERT`, `AUDITHOOK_TLS_KEY`): a real TLS
//! connection with a certificate generated for the test.

use crate::helpers::*;
use serde_json::Value;

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files.
fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let pem = cert.cert.pem();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, &pem).unwrap();
    std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
    (c, k, pem)
}

#[tokio::test]
async fn serves_https_with_the_given_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, pem) = certificate(dir.path());
    let mut cfg = config_for_backend(dir.path()).await;
    cfg.tls_cert = Some(cert);
    cfg.tls_key = Some(key);
    let app = spawn_with(cfg, std::sync::Arc::new(dir)).await;
    let port = app.base.rsplit(':').next().unwrap().to_owned();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .https_only(true)
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    let event = hook_payload("tls-1", 1_700_000_000_000);
    let r = client
        .post(format!("{base}/hooks/launchdarkly"))
        .bearer_auth(HOOK_TOKEN)
        .header("content-type", "application/json")
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let one: Value = client
        .get(format!("{base}/api/v2/auditlog/tls-1"))
        .header("authorization", API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["_id"], "tls-1");
    // Signing in to the UI over TLS gives a Secure session cookie.
    let r = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{base}/ui/login"))
        .form(&[("token", API_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    // A client that does not trust the certificate is refused by TLS itself.
    let untrusting = reqwest::Client::new();
    assert!(untrusting
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err());
    // Plain HTTP on the TLS port gets no HTTP answer.
    assert!(reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .is_err());
    app.stop().await;
}

#[tokio::test]
async fn half_a_tls_configuration_stops_start_up_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _key, _) = certificate(dir.path());
    let mut cfg = test_config(&dir.path().join("a.db"));
    cfg.tls_cert = Some(cert.clone());
    let err = audithook::Application::build(cfg.clone())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("AUDITHOOK_TLS_KEY is not"), "{err}");
    cfg.tls_key = Some(dir.path().join("missing.pem"));
    let err = audithook::Application::build(cfg)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("AUDITHOOK_TLS_CERT=") && err.contains("missing.pem"),
        "{err}"
    );
}
