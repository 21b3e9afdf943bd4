//! Denials written by the gateway itself, as RFC 9457 problem documents.

use bouncer_core::problem::{PROBLEM_JSON, Problem, ProblemKind};
use bytes::Bytes;
use pingora::{http::ResponseHeader, proxy::Session};

/// A denial: the kind, the detail, and extra headers (`Allow`,
/// `WWW-Authenticate`, `Retry-After`).
#[derive(Debug)]
pub struct Denial {
    pub kind: ProblemKind,
    pub detail: &'static str,
    pub headers: Vec<(&'static str, String)>,
    /// Short label for the access log and metrics.
    pub decision: &'static str,
}

impl Denial {
    pub fn new(kind: ProblemKind, detail: &'static str, decision: &'static str) -> Self {
        Self { kind, detail, headers: Vec::new(), decision }
    }

    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// 401 for a request that sent no credential: the challenge without an
    /// `error` attribute (RFC 6750 §3.1).
    pub fn no_token() -> Self {
        Self::new(
            ProblemKind::UNAUTHENTICATED,
            "Send an access token as 'Authorization: Bearer <token>'.",
            "no_token",
        )
        .with("www-authenticate", "Bearer realm=\"bouncer\"")
    }

    /// 401 with the RFC 6750 challenge.
    pub fn invalid_token(detail: &'static str, decision: &'static str) -> Self {
        Self::new(ProblemKind::INVALID_TOKEN, detail, decision)
            .with("www-authenticate", "Bearer realm=\"bouncer\", error=\"invalid_token\"")
    }

    /// Writes the response; the caller then returns `Ok(true)` from the
    /// request filter.
    pub async fn write(&self, session: &mut Session, request_id: &str) -> pingora::Result<()> {
        let mut problem = Problem::new(self.kind, self.detail);
        problem.request_id = Some(request_id.to_owned());
        let body = Bytes::from(serde_json::to_vec(&problem).unwrap_or_default());
        let mut header = ResponseHeader::build(self.kind.status, Some(4 + self.headers.len()))?;
        header.insert_header("content-type", PROBLEM_JSON)?;
        header.insert_header("content-length", body.len().to_string())?;
        header.insert_header("cache-control", "no-store")?;
        header.insert_header("x-request-id", request_id)?;
        for (name, value) in &self.headers {
            header.insert_header(*name, value.as_str())?;
        }
        session.write_response_header(Box::new(header), false).await?;
        session.write_response_body(Some(body), true).await
    }
}
