//! The events of BinderHub's event-stream API (`/build/…`), as one type.
//!
//! Each serializes to the JSON object BinderHub sends in a `data:` line: `phase` (the variant's
//! name in snake case) and `message` (text ending in a newline, shown in the build log), plus the
//! fields of that phase, named as BinderHub names them (`imageName`, `status_code`, …).

use serde::{Deserialize, Serialize};

/// One event of a build or launch, in BinderHub's JSON shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Event {
    /// The request was accepted; the build has not started yet.
    Waiting {
        /// Log text.
        message: String,
    },
    /// The repository is being fetched.
    Fetching {
        /// Log text.
        message: String,
    },
    /// The image is being built: a phase change or one build log line.
    Building {
        /// Log text.
        message: String,
    },
    /// The image exists (berth's own phase between `building` and `launching`).
    Built {
        /// Log text.
        message: String,
        /// The image to launch.
        #[serde(rename = "imageName")]
        image_name: String,
        /// The commit built, 40 hex digits.
        commit: String,
        /// The environment's hash, 64 hex digits.
        env_hash: String,
        /// Whether the environment image was reused without a build.
        cached_env: bool,
        /// The data sets the repository's `berth-data.txt` names (berth's own; absent when
        /// none), mounted at launch.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        data: Vec<String>,
    },
    /// The session is starting.
    Launching {
        /// Log text.
        message: String,
    },
    /// The session is running (or, with `build_only`, the image is built).
    Ready(Box<Ready>),
    /// The build or launch failed; the stream ends.
    Failed {
        /// Why, on one line.
        message: String,
        /// The HTTP status BinderHub gives this failure (403 refused, 429 quota, 500 build …).
        status_code: u16,
    },
}

/// The fields of a `ready` event. With `build_only` only `message` and `imageName` are set, as
/// BinderHub sends them; otherwise everything but `imageName`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    /// Log text.
    pub message: String,
    /// The built image (`build_only` requests).
    #[serde(rename = "imageName", skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    /// The session's URL through the proxy, ending in `/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The session's Jupyter token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The image the session runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The URL path opened in the session (no leading `/`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open: Option<String>,
    /// The repository's clone URL, credentials replaced by `***`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo_url: Option<String>,
    /// A web page of the repository at the commit built, as BinderHub's provider gives it
    /// (`…/tree/<commit>`; the clone URL for the `git` provider).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binder_ref_url: Option<String>,
    /// The server's public URL, ending in `/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binder_launch_host: Option<String>,
    /// `v2/<provider>/<spec>` as requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binder_request: Option<String>,
    /// `v2/<provider>/<spec>` with the ref replaced by the commit, escaped as BinderHub's
    /// `get_resolved_spec`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binder_persistent_request: Option<String>,
    /// berth's own field, when the operator enabled `export`: the URL that downloads the
    /// session's environment as a berth bundle (`<public URL>/export/<provider>/<spec>?token=…`,
    /// with the session's token). BinderHub's clients ignore it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_url: Option<String>,
}

impl Event {
    /// A `failed` event; `message` gets its final newline here.
    pub fn failed(status_code: u16, message: impl std::fmt::Display) -> Self {
        Event::Failed {
            message: format!("{message}\n"),
            status_code,
        }
    }

    /// Whether the event ends a build (`built` or `failed`).
    pub fn ends_build(&self) -> bool {
        matches!(self, Event::Built { .. } | Event::Failed { .. })
    }

    /// The JSON text of a `data:` line.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every key is a string, every value plain data.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"phase":"failed","message":"internal error\n","status_code":500}"#.into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_binderhubs_shape() {
        let v: serde_json::Value =
            serde_json::from_str(&Event::failed(429, "Too many users").to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"phase": "failed", "message": "Too many users\n", "status_code": 429})
        );
        let ready = Event::Ready(Box::new(Ready {
            message: "Done\n".into(),
            image_name: Some("berth/x:1".into()),
            ..Ready::default()
        }));
        let v: serde_json::Value = serde_json::from_str(&ready.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"phase": "ready", "message": "Done\n", "imageName": "berth/x:1"})
        );
    }
}
