//! The server's errors, each of which is also its HTTP response.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::events::Event;
use crate::providers::SpecError;

/// Everything a request can fail with. Each displays as one line, never with an internal
/// address or a token; [`WebError::status`] is its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The launch spec is refused.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// `/build/…` without `Accept: text/event-stream`.
    #[error("this API speaks text/event-stream: send Accept: text/event-stream")]
    NotEventStream,
    /// A `urlpath`, `labpath` or `filepath` that would leave the session.
    #[error("{0}")]
    BadPath(String),
    /// No session has that id (or it is gone).
    #[error("no such session")]
    NoSession,
    /// The request presents no token for the session.
    #[error("this session needs its token (?token=…)")]
    TokenMissing,
    /// The request presents another token than the session's.
    #[error("wrong token for this session")]
    TokenWrong,
    /// A cookie-authenticated request from another site (`Origin`/`Referer` not this server).
    #[error("cross-origin request refused: {0} is not this server's origin")]
    CrossOrigin(String),
    /// A cookie-authenticated state-changing request without matching XSRF proof (the `_xsrf`
    /// cookie repeated in an `X-XSRFToken` header, as Jupyter wants it).
    #[error("'_xsrf' argument missing from POST: send the _xsrf cookie's value in an X-XSRFToken header")]
    Xsrf,
    /// A request body over the size the server takes (see [`crate::MAX_BODY_BYTES`]), or one
    /// that could not be read.
    #[error("the request body is too large or could not be read")]
    BodyTooLarge,
    /// A WebSocket upgrade that is not one.
    #[error("bad websocket request")]
    BadWebSocket,
    /// The session's Jupyter server cannot be reached (or answered nonsense).
    #[error("the session does not answer")]
    SessionDown,
    /// The session backend (the container engine) cannot be reached.
    #[error("the session backend is unavailable: {0}")]
    Backend(String),
    /// `/export/…` on a server whose operator has not enabled `export`.
    #[error("this server does not offer environments for download (its operator can enable it with `export: true` in its configuration)")]
    ExportOff,
    /// `/export/…` without a session token.
    #[error("downloading an environment needs the token of a running session of it (?token=… or Authorization: token …)")]
    ExportTokenMissing,
    /// `/export/…` with a token that is no live session's of that spec launched by this server.
    #[error(
        "this token is not that of a running session of this repository and ref on this server"
    )]
    ExportTokenWrong,
    /// The session's image is no longer in the engine.
    #[error("the session's image is no longer on this server")]
    ImageGone,
    /// A `data=` launch parameter that names no valid data set (or one not in the library).
    #[error("{0}")]
    BadData(String),
    /// The export failed (details in the server's log, which may name its own paths).
    #[error("the environment could not be exported: {0}")]
    Export(String),
    /// `/data/…`: no such data set, version, variable or store key.
    #[error("{0}")]
    DataNotFound(String),
    /// `/data/…`: an ambiguous version prefix, an invalid store key, a variable without a 2-D
    /// slice to draw.
    #[error("{0}")]
    DataBadRequest(String),
    /// `/data/…`: the data library could not be read (details in the server's log).
    #[error("the data library could not be read")]
    DataUnavailable,
}

impl WebError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            WebError::Spec(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST)
            }
            WebError::NotEventStream
            | WebError::BadPath(_)
            | WebError::BadWebSocket
            | WebError::BadData(_)
            | WebError::DataBadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::NoSession
            | WebError::ExportOff
            | WebError::ImageGone
            | WebError::DataNotFound(_) => StatusCode::NOT_FOUND,
            WebError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            WebError::TokenMissing
            | WebError::TokenWrong
            | WebError::CrossOrigin(_)
            | WebError::Xsrf
            | WebError::ExportTokenMissing
            | WebError::ExportTokenWrong => StatusCode::FORBIDDEN,
            WebError::SessionDown => StatusCode::BAD_GATEWAY,
            WebError::Backend(_) => StatusCode::SERVICE_UNAVAILABLE,
            WebError::Export(_) | WebError::DataUnavailable => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A plain-text body: the message and a newline.
impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        (
            self.status(),
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{self}\n"),
        )
            .into_response()
    }
}

/// An error of BinderHub's build API: the same error as a JSON `failed` event (`phase`,
/// `message`, `status_code`), as BinderHub answers requests it refuses before streaming.
#[derive(Debug)]
pub struct ApiError(pub WebError);

impl<E: Into<WebError>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        (status, Json(Event::failed(status.as_u16(), &self.0))).into_response()
    }
}
