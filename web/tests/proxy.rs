//! The proxy in process, against a fake backend whose Jupyter is a tiny server on loopback:
//! cross-site protections, redirects, sessions that move or go away, the body limit.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const S: &str = "fake-0badcafe";

async fn setup() -> (Server, Arc<FakeBackend>, FakeJupyter) {
    let jupyter = FakeJupyter::start().await;
    let backend = Arc::new(FakeBackend::default());
    backend.put(session(S, &jupyter.server_url(S)));
    let server = Server::start(
        berth_web::Config::default(),
        backend.clone(),
        Arc::new(FakeBuilder::default()),
    )
    .await;
    (server, backend, jupyter)
}

/// The cookie the proxy sets when the token comes in the query.
async fn cookie(c: &reqwest::Client, server: &Server) -> String {
    let r = c
        .get(format!("{}/user/{S}/api/status?token={TOKEN}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set.contains(&format!("Path=/user/{S}/")), "{set}");
    set.split(';').next().unwrap().to_string()
}

#[tokio::test]
async fn cookie_authenticated_cross_site_requests_are_refused() {
    let (server, _backend, jupyter) = setup().await;
    let c = client();
    let berth_cookie = cookie(&c, &server).await;
    let url = format!("{}/user/{S}/api/contents", server.url);
    let post = |origin: Option<&str>, referer: Option<&str>, cookies: &str, xsrf: Option<&str>| {
        let mut r = c.post(&url).header("Cookie", cookies).body("{}");
        if let Some(o) = origin {
            r = r.header("Origin", o);
        }
        if let Some(o) = referer {
            r = r.header("Referer", o);
        }
        if let Some(x) = xsrf {
            r = r.header("X-XSRFToken", x);
        }
        r.send()
    };
    let xsrf = "2|01020304|a0b0c0d0e0f0|1700000000";
    let with_xsrf = format!("{berth_cookie}; _xsrf={xsrf}");

    // Another site's page, with the cookie (and even with XSRF proof it cannot have).
    for (origin, referer) in [
        (Some("http://evil.example"), None),
        (None, Some("http://evil.example/page.html")),
        (Some("null"), None),
    ] {
        let r = post(origin, referer, &with_xsrf, Some(xsrf)).await.unwrap();
        assert_eq!(r.status(), 403, "{origin:?} {referer:?}");
        assert!(r.text().await.unwrap().contains("cross-origin"));
    }
    // The server's own origin, but without XSRF proof, or with the wrong one.
    let r = post(Some(&server.url), None, &berth_cookie, None)
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("_xsrf"));
    let r = post(Some(&server.url), None, &with_xsrf, Some("2|01020304|00|1"))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        jupyter.created.load(Ordering::SeqCst),
        0,
        "no refused request reached Jupyter"
    );

    // The server's own page, as JupyterLab sends it: the _xsrf cookie repeated in the header.
    let r = post(Some(&server.url), None, &with_xsrf, Some(xsrf))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let referer = format!("{}/user/{S}/lab", server.url);
    let r = post(None, Some(&referer), &with_xsrf, Some(xsrf))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(jupyter.created.load(Ordering::SeqCst), 2);

    // API clients with the token in the header or the query: no origin or XSRF check.
    let r = c
        .post(&url)
        .header("Origin", "http://evil.example")
        .header("Authorization", format!("token {TOKEN}"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .post(format!("{url}?token={TOKEN}"))
        .header("Origin", "http://other.example")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(jupyter.created.load(Ordering::SeqCst), 4);
    // Reads with the cookie alone stay possible (a page navigating to the session).
    let r = c
        .get(format!("{}/user/{S}/api/status", server.url))
        .header("Cookie", &berth_cookie)
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn cross_site_websockets_with_the_cookie_are_refused() {
    let (server, _backend, _jupyter) = setup().await;
    let c = client();
    let berth_cookie = cookie(&c, &server).await;
    let ws_url = format!(
        "{}/user/{S}/api/kernels/k1/channels",
        server.url.replacen("http://", "ws://", 1)
    );
    let connect = |headers: Vec<(&'static str, String)>| {
        let mut req = ws_url.as_str().into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(k, v.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    // Another site's page with the cookie.
    match connect(vec![
        ("cookie", berth_cookie.clone()),
        ("origin", "http://evil.example".into()),
    ])
    .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        Err(e) => panic!("expected a 403, got {e}"),
        Ok(_) => panic!("a cross-site WebSocket with the cookie was accepted"),
    }
    // The server's own page with the cookie, and an API client with the token in the header
    // from anywhere: both talk to the kernel.
    for headers in [
        vec![
            ("cookie", berth_cookie.clone()),
            ("origin", server.url.clone()),
        ],
        vec![
            ("authorization", format!("token {TOKEN}")),
            ("origin", "http://evil.example".into()),
        ],
    ] {
        let (mut ws, resp) = connect(headers).await.expect("the WebSocket opens");
        assert_eq!(resp.status(), 101);
        ws.send(Message::Text("hello".into())).await.unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), "echo hello");
    }
}

#[tokio::test]
async fn redirects_are_passed_to_the_browser() {
    let (server, _backend, _jupyter) = setup().await;
    let r = client()
        .get(format!("{}/user/{S}/tree?token={TOKEN}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "the proxy followed Jupyter's redirect");
    assert_eq!(r.headers()["location"], format!("/user/{S}/lab"));
}

#[tokio::test]
async fn moved_sessions_are_found_again_and_gone_ones_are_404() {
    let (server, backend, first) = setup().await;
    let c = client();
    let status_url = format!("{}/user/{S}/api/status?token={TOKEN}", server.url);
    assert_eq!(c.get(&status_url).send().await.unwrap().status(), 200);
    let first_addr = first.addr;

    // The engine restarted: the session's Jupyter answers at a new address.
    first.stop().await;
    let second = FakeJupyter::start().await;
    backend.put(session(S, &second.server_url(S)));
    // A WebSocket finds it first.
    let ws_url = format!(
        "{}/user/{S}/api/kernels/k1/channels?token={TOKEN}",
        server.url.replacen("http://", "ws://", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .expect("the WebSocket reaches the moved session");
    ws.send(Message::Text("moved".into())).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert_eq!(reply.into_text().unwrap().as_str(), "echo moved");
    drop(ws);
    // Then plain requests.
    let r = c.get(&status_url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // A POST with a body, too.
    let r = c
        .post(format!(
            "{}/user/{S}/api/contents?token={TOKEN}",
            server.url
        ))
        .body("{\"type\": \"notebook\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(second.created.load(Ordering::SeqCst), 1);

    // Jupyter does not answer, the session still exists: 502, without the internal address
    // or the token.
    let second_addr = second.addr;
    second.stop().await;
    let r = c.get(&status_url).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert_eq!(body, "the session does not answer\n");
    for secret in [
        TOKEN.to_string(),
        first_addr.port().to_string(),
        second_addr.port().to_string(),
    ] {
        assert!(!body.contains(&secret), "{body}");
    }

    // The session is gone: 404, not 502.
    backend.remove(S);
    let r = c.get(&status_url).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().await.unwrap(), "no such session\n");
}

/// Sends a request head announcing `length` bytes of body and a few of them; returns the
/// response's status line.
async fn status_line_for_body(server: &Server, path: &str, length: u64) -> String {
    let addr = server.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let body = vec![b' '; length.min(1024) as usize];
    let _ = stream.write_all(&body).await;
    let mut buf = vec![0u8; 512];
    let mut got = Vec::new();
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let (server, _backend, jupyter) = setup().await;
    let path = format!("/user/{S}/api/contents?token={TOKEN}");
    // The endpoint is real: a small body reaches Jupyter.
    let ok = status_line_for_body(&server, &path, 2).await;
    assert!(ok.contains(" 201 "), "{ok}");
    assert_eq!(jupyter.created.load(Ordering::SeqCst), 1);
    let big = status_line_for_body(&server, &path, (berth_web::MAX_BODY_BYTES + 1) as u64).await;
    assert!(big.contains(" 413 "), "{big}");
    assert_eq!(jupyter.created.load(Ordering::SeqCst), 1);
}
