//! A minimal Jupyter client: start a kernel through the REST API and execute code over the
//! kernel websocket, as JupyterLab does.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// What executing a cell gave.
#[derive(Debug, Default)]
pub struct CellResult {
    /// Text written to stdout and stderr, and `execute_result` text.
    pub output: String,
    /// `ename: evalue` when the cell raised.
    pub error: Option<String>,
}

/// Splits a session URL (`http://host:port/base/lab?token=T`) into the server's base URL
/// (`http://host:port/base/`) and the token.
pub fn server_of(url: &str, open: &str) -> (String, String) {
    let (path, token) = url.split_once("?token=").expect("url has a token");
    let base = path
        .strip_suffix(open)
        .expect("url ends with the opened path");
    (base.to_string(), token.to_string())
}

/// Starts a kernel on the server at `base` and executes `code` in it.
pub async fn execute(base: &str, token: &str, code: &str) -> CellResult {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let kernel: Value = client
        .post(format!("{base}api/kernels"))
        .header("Authorization", format!("token {token}"))
        .json(&json!({"name": "python3"}))
        .send()
        .await
        .expect("kernel start request")
        .error_for_status()
        .expect("kernel started")
        .json()
        .await
        .unwrap();
    let kid = kernel["id"].as_str().unwrap().to_string();
    let ws_url = format!(
        "{}api/kernels/{kid}/channels?token={token}",
        base.replacen("http://", "ws://", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .expect("websocket");
    let msg_id = format!("berth-test-{}", std::process::id());
    let request = json!({
        "header": {"msg_id": msg_id, "username": "berth-test", "session": "berth-test-session",
                    "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": false, "store_history": false,
                    "user_expressions": {}, "allow_stdin": false, "stop_on_error": true}
    });
    ws.send(Message::Text(request.to_string().into()))
        .await
        .unwrap();
    let mut result = CellResult::default();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("cell finished in time");
        let Some(Ok(Message::Text(text))) = next else {
            continue;
        };
        let m: Value = serde_json::from_str(&text).unwrap();
        if m["parent_header"]["msg_id"] != msg_id.as_str() || m["channel"] != "iopub" {
            continue;
        }
        match m["msg_type"].as_str().unwrap_or("") {
            "stream" => result
                .output
                .push_str(m["content"]["text"].as_str().unwrap_or("")),
            "execute_result" => result
                .output
                .push_str(m["content"]["data"]["text/plain"].as_str().unwrap_or("")),
            "error" => {
                result.error = Some(format!(
                    "{}: {}",
                    m["content"]["ename"].as_str().unwrap_or(""),
                    m["content"]["evalue"].as_str().unwrap_or("")
                ))
            }
            "status" if m["content"]["execution_state"] == "idle" => break,
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    let _ = client
        .delete(format!("{base}api/kernels/{kid}"))
        .header("Authorization", format!("token {token}"))
        .send()
        .await;
    result
}
