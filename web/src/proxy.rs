//! The proxy to sessions: `/user/<session>/…` to the session's Jupyter server (whose base URL
//! is the same path), HTTP and WebSocket. The session's token is required: as `?token=`, as
//! `Authorization: token …`, or as the cookie the proxy sets, scoped to the session's path, when a
//! token is first accepted. One session's token opens nothing in another.
//!
//! Requests authenticated by that cookie get Jupyter's protections against cross-site requests
//! (jupyter_server's `check_origin` and `check_xsrf_cookie`): a state-changing request (not
//! GET, HEAD or OPTIONS) or a WebSocket upgrade whose `Origin` (or, for a state-changing request
//! without one, `Referer`) is not this server's origin is refused with 403, and a
//! state-changing request must repeat the `_xsrf` cookie in an `X-XSRFToken` header. Requests
//! with the token in the query or in `Authorization` skip both, as in Jupyter: a cross-site page
//! cannot know the token.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{header, request, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use berth_launcher::LaunchError;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as TsMessage;

use crate::{AppState, WebError};

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

/// Headers not passed to the session. The proxy itself checks `Origin` and `Referer` against the
/// server's public origin (see the module's documentation); Jupyter behind it only knows its
/// internal address, so it would take every browser request for a cross-origin one, and since
/// the proxy authenticates every request to Jupyter with the token, Jupyter skips those checks
/// anyway. The check is done once, where the public origin is known.
const NOT_FORWARDED: &[&str] = &["origin", "referer"];

/// Bodies up to this size (1 MiB) are buffered, so the request can be sent again when the
/// session has moved (an engine restart gives it a new address); larger ones are streamed.
const REPLAYABLE_BODY_BYTES: u64 = 1 << 20;

fn cookie_name(session: &str) -> String {
    format!("berth-token-{session}")
}

/// How a request presented the session's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presented {
    /// `?token=…`.
    Query,
    /// `Authorization: token …`.
    Header,
    /// berth's cookie for the session: what a browser sends by itself, also for requests a
    /// page of another site makes it send.
    Cookie,
}

/// The values of the cookies named `name`.
fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// The value of query parameter `name`, as sent.
pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The token the request presents, from the query, the Authorization header or the cookie.
fn presented_token(
    session: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Option<(String, Presented)> {
    if let Some(t) = query_param(query, "token") {
        return Some((t.to_string(), Presented::Query));
    }
    if let Some(a) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = a
            .strip_prefix("token ")
            .or_else(|| a.strip_prefix("Token "))
        {
            return Some((t.trim().to_string(), Presented::Header));
        }
    }
    let name = cookie_name(session);
    let found = cookies(headers, &name)
        .next()
        .map(|v| (v.to_string(), Presented::Cookie));
    found
}

/// Constant-time comparison.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `scheme://host[:port]` of a URL, lowercased.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{authority}").to_ascii_lowercase())
}

/// Whether the request comes from this server's own pages: its `Origin` (or, when
/// `use_referer` and there is no `Origin`, its `Referer`) is the public URL's origin or names
/// the request's own `Host`, as jupyter_server's `check_origin`. A request with neither header
/// is not from a browser page of another site (browsers send `Origin` with cross-site
/// state-changing requests and WebSocket upgrades) and passes; XSRF proof is still required.
fn check_origin(state: &AppState, headers: &HeaderMap, use_referer: bool) -> Result<(), WebError> {
    let header_str = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let given = match header_str(header::ORIGIN) {
        Some(o) => o,
        None if use_referer => match header_str(header::REFERER) {
            Some(r) => r,
            None => return Ok(()),
        },
        None => return Ok(()),
    };
    let shown = crate::providers::shorten(given);
    let Some(origin) = origin_of(given) else {
        return Err(WebError::CrossOrigin(shown));
    };
    let public = origin_of(&state.config.public_url());
    let host = header_str(header::HOST).map(str::to_ascii_lowercase);
    let same_host = host.is_some_and(|h| origin.split_once("://").is_some_and(|(_, a)| a == h));
    if public.as_deref() == Some(origin.as_str()) || same_host {
        Ok(())
    } else {
        Err(WebError::CrossOrigin(shown))
    }
}

/// The secret inside an XSRF token, as tornado reads it: version 2 tokens
/// (`2|<mask hex>|<masked token hex>|<timestamp>`) are unmasked, anything else is taken as is.
fn xsrf_secret(token: &str) -> Vec<u8> {
    let token = token.trim_matches('"');
    if let Some(rest) = token.strip_prefix("2|") {
        let mut parts = rest.split('|');
        if let (Some(mask), Some(masked)) = (parts.next(), parts.next()) {
            if let (Ok(mask), Ok(masked)) = (hex::decode(mask), hex::decode(masked)) {
                if !mask.is_empty() {
                    return masked
                        .iter()
                        .enumerate()
                        .map(|(i, b)| b ^ mask[i % mask.len()])
                        .collect();
                }
            }
        }
    }
    token.as_bytes().to_vec()
}

/// Jupyter's XSRF check (tornado's `check_xsrf_cookie`): the `_xsrf` cookie, repeated in an
/// `X-XSRFToken` (or `X-CSRFToken`) header or an `_xsrf` query parameter.
fn check_xsrf(query: Option<&str>, headers: &HeaderMap) -> Result<(), WebError> {
    let proof = ["x-xsrftoken", "x-csrftoken"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .or_else(|| query_param(query, "_xsrf"))
        .ok_or(WebError::Xsrf)?;
    let proof = xsrf_secret(proof);
    if !proof.is_empty() && cookies(headers, "_xsrf").any(|c| same(&xsrf_secret(c), &proof)) {
        Ok(())
    } else {
        Err(WebError::Xsrf)
    }
}

/// The session's Jupyter server URL and token: from the cache, or (`fresh`, or not cached) from
/// the backend. A session the backend does not know is dropped from the cache.
async fn lookup(
    state: &AppState,
    session: &str,
    fresh: bool,
) -> Result<(String, String), WebError> {
    if !berth_launcher::valid_session_id(session) {
        return Err(WebError::NoSession);
    }
    let cache = || state.sessions.lock().unwrap_or_else(|e| e.into_inner());
    if !fresh {
        if let Some(v) = cache().get(session).cloned() {
            return Ok(v);
        }
    }
    match state.backend.get(session).await {
        Ok(s) if !s.server_url.is_empty() => {
            let v = (s.server_url, s.token);
            cache().insert(session.to_string(), v.clone());
            Ok(v)
        }
        Ok(_) | Err(LaunchError::UnknownSession(_) | LaunchError::InvalidSessionId(_)) => {
            cache().remove(session);
            Err(WebError::NoSession)
        }
        Err(e) => Err(WebError::Backend(e.to_string())),
    }
}

/// `/user/<session>` → `/user/<session>/`.
pub async fn redirect_slash(Path(session): Path<String>, req: Request) -> Response {
    if !berth_launcher::valid_session_id(&session) {
        return WebError::NoSession.into_response();
    }
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
    forward(state, session, String::new(), req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `/user/<session>/<path>`.
pub async fn proxy(
    State(state): State<Arc<AppState>>,
    Path((session, path)): Path<(String, String)>,
    req: Request,
) -> Response {
    forward(state, session, path, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn forward(
    state: Arc<AppState>,
    session: String,
    path: String,
    req: Request,
) -> Result<Response, WebError> {
    let (server, token) = lookup(&state, &session, false).await?;
    let query = req.uri().query().map(str::to_string);
    let (given, how) =
        presented_token(&session, query.as_deref(), req.headers()).ok_or(WebError::TokenMissing)?;
    if !same(given.as_bytes(), token.as_bytes()) {
        return Err(WebError::TokenWrong);
    }
    let is_ws = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if how == Presented::Cookie && (is_ws || !safe) {
        check_origin(&state, req.headers(), !safe)?;
        if !safe {
            check_xsrf(query.as_deref(), req.headers())?;
        }
    }
    // The path as sent (axum's `path` is decoded), so Jupyter sees `%2F` in file names.
    let raw_path = req
        .uri()
        .path()
        .strip_prefix(&format!("/user/{session}/"))
        .unwrap_or(&path)
        .to_string();
    let suffix = format!(
        "{raw_path}{}",
        query
            .as_deref()
            .map(|q| format!("?{q}"))
            .unwrap_or_default()
    );
    let mut resp = if is_ws {
        websocket(&state, &session, server, &suffix, &token, req).await?
    } else {
        http(&state, &session, server, &suffix, &token, req).await?
    };
    if how == Presented::Query {
        let cookie = format!(
            "{}={token}; Path=/user/{session}/; HttpOnly; SameSite=Lax",
            cookie_name(&session)
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(resp)
}

/// The request to Jupyter: the client's headers but hop-by-hop ones, `Origin`, `Referer` and
/// its credentials, with the session's token instead.
fn upstream_request(
    state: &AppState,
    parts: &request::Parts,
    target: &str,
    token: &str,
) -> reqwest::RequestBuilder {
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let mut out = state.http.request(method, target);
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
    out.header("Authorization", format!("token {token}"))
}

async fn http(
    state: &AppState,
    session: &str,
    server: String,
    suffix: &str,
    token: &str,
    req: Request,
) -> Result<Response, WebError> {
    let (parts, body) = req.into_parts();
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
    let (replayable, streamed) = match length {
        Some(n) if n > REPLAYABLE_BODY_BYTES => (None, Some(body)),
        _ if chunked => (None, Some(body)),
        // Small, or none (HTTP/1.1 without a length has no body).
        _ => {
            let bytes = axum::body::to_bytes(body, REPLAYABLE_BODY_BYTES as usize)
                .await
                .map_err(|_| WebError::BodyTooLarge)?;
            (Some(bytes), None)
        }
    };
    let sent = match &replayable {
        Some(bytes) => {
            let first = upstream_request(state, &parts, &format!("{server}{suffix}"), token)
                .body(bytes.clone())
                .send()
                .await;
            match first {
                Err(e) if e.is_connect() => {
                    // The session may have moved (an engine restart) or be gone: ask again.
                    let (again, token) = lookup(state, session, true).await?;
                    if again == server {
                        return Err(WebError::SessionDown);
                    }
                    upstream_request(state, &parts, &format!("{again}{suffix}"), &token)
                        .body(bytes.clone())
                        .send()
                        .await
                }
                other => other,
            }
        }
        None => {
            let body = streamed.map(|b| reqwest::Body::wrap_stream(b.into_data_stream()));
            let body = body.unwrap_or_else(|| reqwest::Body::from(Bytes::new()));
            let sent = upstream_request(state, &parts, &format!("{server}{suffix}"), token)
                .body(body)
                .send()
                .await;
            if sent.as_ref().is_err_and(reqwest::Error::is_connect) {
                // The body is spent: learn the session's new address for the next request.
                lookup(state, session, true).await?;
            }
            sent
        }
    };
    let resp = sent.map_err(|e| {
        tracing::warn!(session, error = %e, "the session does not answer");
        WebError::SessionDown
    })?;
    let mut builder = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers().iter() {
        if HOP_BY_HOP.contains(&k.as_str()) {
            continue;
        }
        builder = builder.header(k.as_str(), v.as_bytes());
    }
    builder
        .body(Body::from_stream(resp.bytes_stream()))
        .map_err(|_| WebError::SessionDown)
}

type Upstream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the WebSocket to Jupyter at `server` + `suffix`.
async fn connect_ws(
    server: &str,
    suffix: &str,
    token: &str,
    headers: &HeaderMap,
) -> Result<(Upstream, Option<String>), tokio_tungstenite::tungstenite::Error> {
    let target = format!("{server}{suffix}").replacen("http://", "ws://", 1);
    let mut upstream_req = target.as_str().into_client_request()?;
    let h = upstream_req.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("token {token}")) {
        h.insert(header::AUTHORIZATION, v);
    }
    for name in [header::COOKIE, header::SEC_WEBSOCKET_PROTOCOL] {
        if let Some(v) = headers.get(&name) {
            h.insert(name, v.clone());
        }
    }
    let (stream, resp) = tokio_tungstenite::connect_async(upstream_req).await?;
    let protocol = resp
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((stream, protocol))
}

async fn websocket(
    state: &Arc<AppState>,
    session: &str,
    server: String,
    suffix: &str,
    token: &str,
    req: Request,
) -> Result<Response, WebError> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let (mut parts, _) = req.into_parts();
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, state)
        .await
        .map_err(|_| WebError::BadWebSocket)?;
    let refused = |e: WsError| match e {
        WsError::Http(resp) => {
            // Jupyter answered, but not with a WebSocket: pass its status on.
            let status =
                StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            Ok((status, "the session refused the websocket\n").into_response())
        }
        _ => Err(WebError::SessionDown),
    };
    let connected = match connect_ws(&server, suffix, token, &parts.headers).await {
        Err(WsError::Io(_)) => {
            // The session may have moved (an engine restart) or be gone: ask again.
            let (again, token) = lookup(state, session, true).await?;
            if again == server {
                return Err(WebError::SessionDown);
            }
            connect_ws(&again, suffix, &token, &parts.headers).await
        }
        other => other,
    };
    let (upstream, protocol) = match connected {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    let upgrade = match protocol {
        Some(p) => upgrade.protocols([p]),
        None => upgrade,
    };
    Ok(upgrade.on_upgrade(move |client| pump(client, upstream)))
}

async fn pump(client: WebSocket, upstream: Upstream) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xsrf_tokens_are_read_as_tornado_does() {
        // The same secret under two masks (tornado masks it anew for every page).
        let secret = [0x11u8, 0x22, 0x33, 0x44, 0x55];
        let masked = |mask: [u8; 4]| {
            let m: Vec<u8> = secret
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            format!("2|{}|{}|1700000000", hex::encode(mask), hex::encode(m))
        };
        let a = masked([1, 2, 3, 4]);
        let b = masked([9, 8, 7, 6]);
        assert_ne!(a, b);
        assert_eq!(xsrf_secret(&a), secret);
        assert_eq!(xsrf_secret(&b), secret);
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, format!("_xsrf={a}").parse().unwrap());
        h.insert("x-xsrftoken", b.parse().unwrap());
        assert!(check_xsrf(None, &h).is_ok());
        h.insert("x-xsrftoken", "2|01020304|00|1".parse().unwrap());
        assert!(check_xsrf(None, &h).is_err());
    }

    #[test]
    fn origins() {
        assert_eq!(
            origin_of("https://Binder.Example.org:8443/x?y").as_deref(),
            Some("https://binder.example.org:8443")
        );
        assert_eq!(origin_of("null"), None);
    }
}
