//! A small blocking HTTP client for probes and downloads (plain HTTP: what is
//! fetched is verified by signature and digest, not by the transport).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ureq::unversioned::{
    resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver},
    transport::{DefaultConnector, NextTimeout},
};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{url}: {why}")]
pub struct FetchError {
    pub url: String,
    pub why: String,
}

#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
    /// No request runs past this instant (early boot's overall deadline).
    deadline: Option<Instant>,
}

impl Http {
    /// Every request, connection and body included, ends within `timeout`.
    pub fn new(timeout: Duration) -> Http {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(true)
            .max_redirects(0)
            // An image transfer keeps four connections to a server busy: keep
            // them all (ureq's default is 3), not a new TCP connection per chunk.
            .max_idle_connections_per_host(8)
            // ureq zeroes 128 KiB for each direction of every connection:
            // under qemu's emulated CPU a probe spent more on that than on the
            // request. Static files have headers of a few hundred bytes.
            .input_buffer_size(32 * 1024)
            .output_buffer_size(8 * 1024)
            .max_response_header_size(16 * 1024)
            .user_agent(concat!("gsed/", env!("CARGO_PKG_VERSION")))
            .build();
        let agent = ureq::Agent::with_parts(config, DefaultConnector::default(), OnceResolver::default());
        Http { agent, deadline: None }
    }

    /// The same client, but every request ends by `deadline` at the latest.
    pub fn until(mut self, deadline: Instant) -> Http {
        self.deadline = Some(deadline);
        self
    }

    /// GETs `url`; bodies larger than `limit` bytes are refused.
    pub fn get(&self, url: &str, limit: u64) -> Result<Vec<u8>, FetchError> {
        let err = |why: String| FetchError { url: url.to_owned(), why };
        let mut req = self.agent.get(url);
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(err("the deadline for this sync has passed".into()));
            }
            req = req.config().timeout_global(Some(left)).build();
        }
        let mut resp = req.call().map_err(|e| err(describe(e)))?;
        resp.body_mut().with_config().limit(limit).read_to_vec().map_err(|e| err(describe(e)))
    }

    /// One probe of a server: `gse1/status.json` (optional: a 404 still means the
    /// server answers), timed, with the load it advertises.
    pub fn probe(&self, base: &str) -> Result<Probe, FetchError> {
        let url = format!("{}/gse1/status.json", base.trim_end_matches('/'));
        let t0 = Instant::now();
        let body = match self.get(&url, 64 * 1024) {
            Ok(b) => Some(b),
            Err(e) if e.why == "HTTP 404" => None,
            Err(e) => return Err(e),
        };
        let latency_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let load = body
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("load").and_then(|l| l.as_f64()))
            .unwrap_or(0.0);
        Ok(Probe { latency_ms, load })
    }
}

/// Resolves each server's name once per client. With a timeout set, ureq's
/// own resolver starts a thread for every request, even to an address or over
/// a kept-alive connection: a thread per image chunk.
#[derive(Debug, Default)]
struct OnceResolver {
    inner: DefaultResolver,
    known: Mutex<HashMap<String, ResolvedSocketAddrs>>,
}

impl Resolver for OnceResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let key = format!("{}://{}", uri.scheme_str().unwrap_or(""), uri.authority().map_or("", |a| a.as_str()));
        if let Some(known) = self.known.lock().ok().and_then(|k| k.get(&key).cloned()) {
            return Ok(known);
        }
        let addrs = self.inner.resolve(uri, config, timeout)?;
        if let Ok(mut k) = self.known.lock() {
            k.insert(key, addrs.clone());
        }
        Ok(addrs)
    }
}

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    pub latency_ms: f64,
    pub load: f64,
}

/// Probes every server at once; results in the order of `servers`.
pub async fn probe_all(http: &Http, servers: &[crate::config::Server]) -> Vec<Result<Probe, FetchError>> {
    let tasks: Vec<_> = servers
        .iter()
        .map(|s| {
            let (http, url) = (http.clone(), s.url.0.clone());
            tokio::task::spawn_blocking(move || http.probe(&url))
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for (t, s) in tasks.into_iter().zip(servers) {
        out.push(
            t.await
                .unwrap_or_else(|e| Err(FetchError { url: s.url.0.clone(), why: format!("probe task failed: {e}") })),
        );
    }
    out
}

fn describe(e: ureq::Error) -> String {
    match e {
        ureq::Error::StatusCode(code) => format!("HTTP {code}"),
        ureq::Error::Timeout(_) => "timed out".into(),
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::BodyExceedsLimit(n) => format!("answer larger than {n} bytes"),
        other => other.to_string(),
    }
}
