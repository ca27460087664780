//! Which Pythons a build can give: the base images (one Debian suite, one CPython each), and
//! Pythons installed by uv where no base has the version asked for.
//!
//! A repository that asks for a version (`runtime.txt`, `environment.yml`, `Pipfile`) gets the
//! base image whose Debian suite ships it: bookworm for 3.11 (the default), trixie for 3.13.
//! For another Python 3 version, uv may install one of its managed Pythons in the build
//! (`uv python install`, downloaded from uv's own source or a mirror). Before planning one,
//! the builder checks from the host, once, that the download source answers
//! ([`probe_python_downloads`], a few seconds at most, remembered for a minute), so a site
//! that cannot download Pythons fails fast with the reason instead of in the middle of a build.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_buildpacks::ManagedPython;
use serde::{Deserialize, Serialize};

/// Where uv downloads CPython by default (python-build-standalone's releases); a mirror
/// replaces this prefix of uv's download URLs (uv's `UV_PYTHON_INSTALL_MIRROR`).
pub const UV_PYTHON_SOURCE: &str =
    "https://github.com/astral-sh/python-build-standalone/releases/download";

/// How long the check of a Python download source may take, name resolution included.
pub const PYTHON_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the answer of a check is reused before the source is checked again.
const PROBE_TTL: Duration = Duration::from_secs(60);

/// A base image and the one CPython its Debian suite ships.
///
/// Written `X.Y=SUITE=IMAGE` (`3.13=trixie=berth-base:trixie`) in `--bases` and
/// `BERTH_BASES`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonBase {
    /// The Python version (`X.Y`) of the image: its `pythonX.Y` and `pythonX.Y-venv` Debian
    /// packages are what the build installs.
    pub python: String,
    /// The Debian suite (`bookworm`) debootstrap creates the image from when it is missing and
    /// cannot be pulled.
    pub suite: String,
    /// The image name (`berth-base:bookworm`); `berth-base:*` names are never pulled.
    pub image: String,
}

impl PythonBase {
    /// A base of `python` (`X.Y`) made from Debian `suite`, named `image`.
    pub fn new(python: &str, suite: &str, image: &str) -> Self {
        Self {
            python: python.into(),
            suite: suite.into(),
            image: image.into(),
        }
    }
}

/// The default bases, the default Python's first: Debian bookworm with Python 3.11
/// (`berth-base:bookworm`) and Debian trixie with Python 3.13 (`berth-base:trixie`).
pub fn default_bases() -> Vec<PythonBase> {
    vec![
        PythonBase::new("3.11", "bookworm", crate::DEFAULT_BASE_IMAGE),
        PythonBase::new("3.13", "trixie", "berth-base:trixie"),
    ]
}

/// A `--bases` entry that is not `X.Y=SUITE=IMAGE`, or a `--python-mirror` that is not a
/// URL; the message is one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PythonConfigError(String);

impl FromStr for PythonBase {
    type Err = PythonConfigError;

    /// Parses `X.Y=SUITE=IMAGE`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            PythonConfigError(format!(
                "invalid base {s:?}: {why} (expected PYTHON=SUITE=IMAGE, e.g. 3.13=trixie=berth-base:trixie)"
            ))
        };
        let mut parts = s.trim().splitn(3, '=');
        let (Some(python), Some(suite), Some(image)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("three parts are needed"));
        };
        let version_ok = python.split_once('.').is_some_and(|(a, b)| {
            [a, b]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
        });
        if !version_ok {
            return Err(bad("the Python version must be X.Y"));
        }
        if suite.is_empty()
            || !suite
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        {
            return Err(bad(
                "the suite must be a Debian suite name such as bookworm",
            ));
        }
        if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c == '=') {
            return Err(bad("the image must be an image name"));
        }
        Ok(Self::new(python, suite, image))
    }
}

impl std::fmt::Display for PythonBase {
    /// `X.Y=SUITE=IMAGE`, as parsed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}={}", self.python, self.suite, self.image)
    }
}

/// Where uv downloads a Python that no base image has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum PythonDownloads {
    /// uv's own download source, [`UV_PYTHON_SOURCE`] (written `uv`).
    #[default]
    Uv,
    /// A mirror of it (an `http://` or `https://` URL, no trailing `/`), handed to uv as
    /// `UV_PYTHON_INSTALL_MIRROR`.
    Mirror(String),
    /// None: only the base images' Pythons (written `none`; what offline sites want).
    Off,
}

impl PythonDownloads {
    /// The URL uv downloads from, `None` when downloads are off.
    pub fn url(&self) -> Option<&str> {
        match self {
            PythonDownloads::Uv => Some(UV_PYTHON_SOURCE),
            PythonDownloads::Mirror(u) => Some(u),
            PythonDownloads::Off => None,
        }
    }

    /// The mirror to hand to uv, `None` for uv's own source (or none).
    pub fn mirror(&self) -> Option<&str> {
        match self {
            PythonDownloads::Mirror(u) => Some(u),
            _ => None,
        }
    }
}

impl FromStr for PythonDownloads {
    type Err = PythonConfigError;

    /// `uv` (or an empty string) for uv's own source, `none` for no downloads, or a mirror's
    /// `http://` or `https://` URL.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s {
            "" | "uv" => return Ok(PythonDownloads::Uv),
            "none" => return Ok(PythonDownloads::Off),
            _ => {}
        }
        let url = url::Url::parse(s).map_err(|e| {
            PythonConfigError(format!(
                "invalid Python mirror {s:?}: {e} (expected an http:// or https:// URL, uv or none)"
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(PythonConfigError(format!(
                "invalid Python mirror {s:?}: expected an http:// or https:// URL, uv or none"
            )));
        }
        Ok(PythonDownloads::Mirror(s.trim_end_matches('/').to_string()))
    }
}

impl TryFrom<String> for PythonDownloads {
    type Error = PythonConfigError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<PythonDownloads> for String {
    fn from(d: PythonDownloads) -> String {
        d.to_string()
    }
}

impl std::fmt::Display for PythonDownloads {
    /// `uv`, the mirror's URL, or `none`, as parsed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PythonDownloads::Uv => f.write_str("uv"),
            PythonDownloads::Mirror(u) => f.write_str(u),
            PythonDownloads::Off => f.write_str("none"),
        }
    }
}

/// Answers of earlier checks: source URL, when, answer.
static PROBES: Mutex<Vec<(String, Instant, ManagedPython)>> = Mutex::new(Vec::new());

/// Whether uv can download Pythons from `downloads`, checked from this host: the source's
/// host name must resolve and accept a TCP connection within `timeout`. It blocks the calling
/// thread for at most `timeout` (the resolution runs on a thread of its own, which a hung
/// resolver may keep a little longer). An answer is reused for a minute.
///
/// This checks reachability, not the download itself: uv checks the file's sha256 and TLS
/// (with the build's CA bundle) when it installs, and a failure there fails the build with
/// uv's message.
pub fn probe_python_downloads(downloads: &PythonDownloads, timeout: Duration) -> ManagedPython {
    let Some(url) = downloads.url() else {
        return ManagedPython::Unavailable(
            "Python downloads are off (--python-mirror none)".into(),
        );
    };
    {
        let mut probes = PROBES.lock().unwrap_or_else(|e| e.into_inner());
        probes.retain(|(_, at, _)| at.elapsed() < PROBE_TTL);
        if let Some((_, _, answer)) = probes.iter().find(|(u, _, _)| u == url) {
            return answer.clone();
        }
    }
    let started = Instant::now();
    let answer = match reach(url, timeout) {
        Ok(()) => ManagedPython::Available {
            mirror: downloads.mirror().map(str::to_string),
        },
        Err(why) => {
            let what = match downloads {
                PythonDownloads::Mirror(_) => "the Python mirror",
                _ => "uv's Python download source",
            };
            ManagedPython::Unavailable(format!("{what} {url} is unreachable: {why}"))
        }
    };
    tracing::info!(%url, ?answer, ms = started.elapsed().as_millis() as u64, "checked the Python download source");
    PROBES.lock().unwrap_or_else(|e| e.into_inner()).push((
        url.to_string(),
        Instant::now(),
        answer.clone(),
    ));
    answer
}

/// Resolves `url`'s host and opens a TCP connection to its port, within `timeout`.
fn reach(url: &str, timeout: Duration) -> Result<(), String> {
    let u = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    let host = match u.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => return Err("the URL has no host".into()),
    };
    let port = u
        .port_or_known_default()
        .ok_or_else(|| "the URL has no port".to_string())?;
    let deadline = Instant::now() + timeout;
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.clone();
    std::thread::Builder::new()
        .name("berth-probe".into())
        .spawn(move || {
            let result = (|| {
                let addrs: Vec<SocketAddr> = (name.as_str(), port)
                    .to_socket_addrs()
                    .map_err(|e| format!("cannot resolve {name}: {e}"))?
                    .collect();
                let mut last = None;
                for a in addrs {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match TcpStream::connect_timeout(&a, left) {
                        Ok(_) => return Ok(()),
                        Err(e) => last = Some(e),
                    }
                }
                Err(match last {
                    Some(e) => format!("cannot connect to {name}:{port}: {e}"),
                    None => format!("{name}:{port} did not answer"),
                })
            })();
            let _ = tx.send(result);
        })
        .map_err(|e| format!("cannot start the check: {e}"))?;
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{host}:{port} did not answer within {} s",
            timeout.as_secs_f64()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_parse_and_print() {
        let b: PythonBase = "3.13=trixie=berth-base:trixie".parse().unwrap();
        assert_eq!(b, PythonBase::new("3.13", "trixie", "berth-base:trixie"));
        assert_eq!(b.to_string(), "3.13=trixie=berth-base:trixie");
        let d: PythonBase = "3.12=noble=registry.example.org:5000/base@sha256:ab"
            .parse()
            .unwrap();
        assert_eq!(d.image, "registry.example.org:5000/base@sha256:ab");
        for bad in [
            "",
            "3.13",
            "3.13=trixie",
            "3=trixie=x",
            "3.x=trixie=x",
            "3.13=Trixie=x",
            "3.13=trixie=",
            "3.13=trixie=a b",
        ] {
            let e = bad.parse::<PythonBase>().unwrap_err().to_string();
            assert!(e.starts_with("invalid base"), "{bad}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let d = default_bases();
        assert_eq!(d[0].python, "3.11");
        assert_eq!(d[0].image, crate::DEFAULT_BASE_IMAGE);
        assert_eq!(d[1].to_string(), "3.13=trixie=berth-base:trixie");
    }

    #[test]
    fn downloads_parse() {
        assert_eq!("uv".parse(), Ok(PythonDownloads::Uv));
        assert_eq!("".parse(), Ok(PythonDownloads::Uv));
        assert_eq!("none".parse(), Ok(PythonDownloads::Off));
        assert_eq!(
            "http://mirror.example.org/pbs/".parse(),
            Ok(PythonDownloads::Mirror(
                "http://mirror.example.org/pbs".into()
            ))
        );
        for bad in ["ftp://x/y", "mirror", "file:///srv/pbs", "http://"] {
            assert!(bad.parse::<PythonDownloads>().is_err(), "{bad}");
        }
        assert_eq!(PythonDownloads::Uv.url(), Some(UV_PYTHON_SOURCE));
        assert_eq!(PythonDownloads::Uv.mirror(), None);
        assert_eq!(PythonDownloads::Off.url(), None);
        let yaml: PythonDownloads = serde_json::from_str("\"none\"").unwrap();
        assert_eq!(yaml, PythonDownloads::Off);
    }

    #[test]
    fn probes_fail_fast_and_say_why() {
        assert_eq!(
            probe_python_downloads(&PythonDownloads::Off, PYTHON_PROBE_TIMEOUT),
            ManagedPython::Unavailable("Python downloads are off (--python-mirror none)".into())
        );
        // A closed port on loopback: refused at once.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let closed = PythonDownloads::Mirror(format!("http://127.0.0.1:{port}/pbs"));
        let started = Instant::now();
        let ManagedPython::Unavailable(why) = probe_python_downloads(&closed, PYTHON_PROBE_TIMEOUT)
        else {
            panic!("a closed port answered");
        };
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            why.starts_with(&format!(
                "the Python mirror http://127.0.0.1:{port}/pbs is unreachable: cannot connect to 127.0.0.1:{port}:"
            )),
            "{why}"
        );
        // A name that cannot resolve (the `.invalid` top-level domain never does).
        let nowhere = PythonDownloads::Mirror("https://pbs.berth.invalid/x".into());
        let ManagedPython::Unavailable(why) =
            probe_python_downloads(&nowhere, PYTHON_PROBE_TIMEOUT)
        else {
            panic!("an invalid name answered");
        };
        assert!(
            why.contains("cannot resolve pbs.berth.invalid") || why.contains("did not answer"),
            "{why}"
        );
        // A listening port answers.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = PythonDownloads::Mirror(format!("http://{}/pbs", l.local_addr().unwrap()));
        assert_eq!(
            probe_python_downloads(&open, PYTHON_PROBE_TIMEOUT),
            ManagedPython::Available {
                mirror: Some(format!("http://{}/pbs", l.local_addr().unwrap()))
            }
        );
    }
}
