//! The proxy to sessions: `/user/<session>/…` to the session's Jupyter server (whose base URL
//! is the same path), HTTP and WebSocket. The session's token is required: as `?token=`, as
//! `Authorization: token …`, or as the cookie the proxy sets, scoped to the session's path, when a
//! token is first accepted. One session's token opens nothing in another.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as TsMessage;

use crate::AppState;

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// Headers not passed to the session: the proxy has already checked the token, and Jupyter
/// would see the browser's origin as another host.
const NOT_FORWARDED: &[&str] = &["origin", "referer"];

fn cookie_name(session: &str) -> String {
    format!("berth-token-{session}")
}

/// The token the request presents, from the query, the Authorization header or the cookie.
fn presented_token(
    session: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Option<(String, bool)> {
    if let Some(q) = query {
        for pair in q.split('&') {
            if let Some(t) = pair.strip_prefix("token=") {
                return Some((t.to_string(), true));
            }
        }
    }
    if let Some(a) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = a
            .strip_prefix("token ")
            .or_else(|| a.strip_prefix("Token "))
        {
            return Some((t.trim().to_string(), false));
        }
    }
    let name = cookie_name(session);
    for cookies in headers.get_all(header::COOKIE) {
        for c in cookies.to_str().unwrap_or("").split(';') {
            if let Some((k, v)) = c.trim().split_once('=') {
                if k == name {
                    return Some((v.to_string(), false));
                }
            }
        }
    }
    None
}

/// Constant-time comparison of tokens.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The session's Jupyter server URL and token, from the cache or the backend.
async fn lookup(state: &AppState, session: &str) -> Option<(String, String)> {
    if !berth_launcher::valid_session_id(session) {
        return None;
    }
    if let Some(v) = state.sessions.lock().ok()?.get(session).cloned() {
        return Some(v);
    }
    let s = state.backend().await.ok()?.get(session).await.ok()?;
    if s.server_url.is_empty() {
        return None;
    }
    let v = (s.server_url, s.token);
    state
        .sessions
        .lock()
        .ok()?
        .insert(session.to_string(), v.clone());
    Some(v)
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

/// `/user/<session>` → `/user/<session>/`.
pub async fn redirect_slash(Path(session): Path<String>, req: Request) -> Response {
    let q = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    Redirect::permanent(&format!("/user/{session}/{q}")).into_response()
}

/// `/user/<session>/`.
pub async fn proxy_root(
    State(state): State<Arc<AppState>>,
    Path(session): Path<String>,
    req: Request,
) -> Response {
    forward(state, session, String::new(), req).await
}

/// `/user/<session>/<path>`.
pub async fn proxy(
    State(state): State<Arc<AppState>>,
    Path((session, path)): Path<(String, String)>,
    req: Request,
) -> Response {
    forward(state, session, path, req).await
}

async fn forward(state: Arc<AppState>, session: String, path: String, req: Request) -> Response {
    let Some((server, token)) = lookup(&state, &session).await else {
        return refuse(StatusCode::NOT_FOUND, "no such session");
    };
    let query = req.uri().query().map(str::to_string);
    let Some((given, from_query)) = presented_token(&session, query.as_deref(), req.headers())
    else {
        return refuse(
            StatusCode::FORBIDDEN,
            "this session needs its token (?token=…)",
        );
    };
    if !same(&given, &token) {
        return refuse(StatusCode::FORBIDDEN, "wrong token for this session");
    }
    let target = format!(
        "{server}{path}{}",
        query
            .as_deref()
            .map(|q| format!("?{q}"))
            .unwrap_or_default()
    );
    let is_ws = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let mut resp = if is_ws {
        websocket(state.clone(), target, &token, req).await
    } else {
        http(&state, target, &token, req).await
    };
    if from_query {
        let cookie = format!(
            "{}={token}; Path=/user/{session}/; HttpOnly; SameSite=Lax",
            cookie_name(&session)
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

async fn http(state: &AppState, target: String, token: &str, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let mut out = state.http.request(method, &target);
    for (k, v) in parts.headers.iter() {
        if HOP_BY_HOP.contains(&k.as_str())
            || NOT_FORWARDED.contains(&k.as_str())
            || k == header::AUTHORIZATION
        {
            continue;
        }
        out = out.header(k.as_str(), v.as_bytes());
    }
    // The proxy checked the token; Jupyter checks it again.
    out = out.header("Authorization", format!("token {token}"));
    if parts.method != Method::GET && parts.method != Method::HEAD {
        out = out.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    let resp = match out.send().await {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_GATEWAY,
                &format!("the session does not answer: {e}"),
            )
        }
    };
    let mut builder = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers().iter() {
        if HOP_BY_HOP.contains(&k.as_str()) {
            continue;
        }
        builder = builder.header(k.as_str(), v.as_bytes());
    }
    builder
        .body(Body::from_stream(resp.bytes_stream()))
        .unwrap_or_else(|_| refuse(StatusCode::BAD_GATEWAY, "bad response from the session"))
}

async fn websocket(state: Arc<AppState>, target: String, token: &str, req: Request) -> Response {
    let (mut parts, _) = req.into_parts();
    let Ok(upgrade) = WebSocketUpgrade::from_request_parts(&mut parts, &state).await else {
        return refuse(StatusCode::BAD_REQUEST, "bad websocket request");
    };
    let ws_target = target.replacen("http://", "ws://", 1);
    let Ok(mut upstream_req) = ws_target.as_str().into_client_request() else {
        return refuse(StatusCode::BAD_GATEWAY, "bad session address");
    };
    let h = upstream_req.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("token {token}")) {
        h.insert(header::AUTHORIZATION, v);
    }
    for name in [header::COOKIE, header::SEC_WEBSOCKET_PROTOCOL] {
        if let Some(v) = parts.headers.get(&name) {
            h.insert(name, v.clone());
        }
    }
    let (upstream, resp) = match tokio_tungstenite::connect_async(upstream_req).await {
        Ok(x) => x,
        Err(e) => {
            return refuse(
                StatusCode::BAD_GATEWAY,
                &format!("the session refused the websocket: {e}"),
            )
        }
    };
    let mut upgrade = upgrade;
    if let Some(p) = resp
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
    {
        upgrade = upgrade.protocols([p.to_string()]);
    }
    upgrade.on_upgrade(move |client| pump(client, upstream))
}

async fn pump(
    client: WebSocket,
    upstream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) {
    let (mut c_tx, mut c_rx) = client.split();
    let (mut u_tx, mut u_rx) = upstream.split();
    let to_upstream = async {
        while let Some(Ok(m)) = c_rx.next().await {
            let m = match m {
                AxMessage::Text(t) => TsMessage::Text(t.as_str().into()),
                AxMessage::Binary(b) => TsMessage::Binary(b),
                AxMessage::Ping(b) => TsMessage::Ping(b),
                AxMessage::Pong(b) => TsMessage::Pong(b),
                AxMessage::Close(_) => break,
            };
            if u_tx.send(m).await.is_err() {
                break;
            }
        }
        let _ = u_tx.close().await;
    };
    let to_client = async {
        while let Some(Ok(m)) = u_rx.next().await {
            let m = match m {
                TsMessage::Text(t) => AxMessage::Text(t.as_str().into()),
                TsMessage::Binary(b) => AxMessage::Binary(b),
                TsMessage::Ping(b) => AxMessage::Ping(b),
                TsMessage::Pong(b) => AxMessage::Pong(b),
                TsMessage::Close(_) => break,
                TsMessage::Frame(_) => continue,
            };
            if c_tx.send(m).await.is_err() {
                break;
            }
        }
        let _ = c_tx.close().await;
    };
    tokio::select! {
        _ = to_upstream => {},
        _ = to_client => {},
    }
}
