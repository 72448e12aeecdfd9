//! A small blocking HTTP client for probes and downloads (plain HTTP: what is
//! fetched is verified by signature and digest, not by the transport).

use std::time::{Duration, Instant};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{url}: {why}")]
pub struct FetchError {
    pub url: String,
    pub why: String,
}

#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
}

impl Http {
    /// Every request, connection and body included, ends within `timeout`.
    pub fn new(timeout: Duration) -> Http {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(true)
            .max_redirects(0)
            .user_agent(concat!("gsed/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Http { agent }
    }

    /// GETs `url`; bodies larger than `limit` bytes are refused.
    pub fn get(&self, url: &str, limit: u64) -> Result<Vec<u8>, FetchError> {
        let err = |why: String| FetchError { url: url.to_owned(), why };
        let mut resp = self.agent.get(url).call().map_err(|e| err(describe(e)))?;
        resp.body_mut().with_config().limit(limit).read_to_vec().map_err(|e| err(describe(e)))
    }

    /// GETs `url` and returns the body (if any) and the time it took.
    pub fn probe(&self, url: &str) -> (Result<Option<Vec<u8>>, FetchError>, Duration) {
        let t0 = Instant::now();
        let r = match self.get(url, 64 * 1024) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.why == "HTTP 404" => Ok(None),
            Err(e) => Err(e),
        };
        (r, t0.elapsed())
    }
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
