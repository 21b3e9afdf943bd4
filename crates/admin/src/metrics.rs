//! Prometheus metrics of the admin service, served at `GET /metrics`.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusClass {
    class: &'static str,
}

/// Every counter the admin service exports.
pub struct Metrics {
    registry: Registry,
    responses: Family<StatusClass, Counter>,
    logins: Family<Outcome, Counter>,
    refreshes: Family<Outcome, Counter>,
    logouts: Family<Outcome, Counter>,
    client_tokens: Family<Outcome, Counter>,
    signups: Counter,
    password_changes: Counter,
    password_verifications: Counter,
    revocations: Counter,
    bans: Counter,
    audit_appends: Counter,
    hash_queue: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("bouncer_admin");
        let m = Self {
            responses: Family::default(),
            logins: Family::default(),
            refreshes: Family::default(),
            logouts: Family::default(),
            client_tokens: Family::default(),
            signups: Counter::default(),
            password_changes: Counter::default(),
            password_verifications: Counter::default(),
            revocations: Counter::default(),
            bans: Counter::default(),
            audit_appends: Counter::default(),
            hash_queue: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("http_responses", "HTTP responses by status class", m.responses.clone());
        registry.register(
            "logins",
            "Login attempts by outcome (succeeded, invalid_credentials, banned, throttled)",
            m.logins.clone(),
        );
        registry.register(
            "refreshes",
            "Refresh-token presentations by outcome (rotated, reuse_detected, invalid)",
            m.refreshes.clone(),
        );
        registry.register("logouts", "Logouts by kind (session, all)", m.logouts.clone());
        registry.register(
            "client_tokens",
            "POST /oauth/token by outcome (issued, invalid_client, invalid_scope, invalid_request, throttled)",
            m.client_tokens.clone(),
        );
        registry.register("signups", "Accounts created through signup", m.signups.clone());
        registry.register("password_changes", "Passwords changed by their owner", m.password_changes.clone());
        registry.register(
            "password_verifications",
            "Argon2 verifications run, including the dummy one for unknown emails",
            m.password_verifications.clone(),
        );
        registry.register("revocations", "Revocations announced to token verifiers", m.revocations.clone());
        registry.register("bans", "Users banned", m.bans.clone());
        registry.register("audit_appends", "Audit events appended by this process", m.audit_appends.clone());
        registry.register(
            "password_hash_queue",
            "Password hashes waiting for a CPU permit",
            m.hash_queue.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    pub fn record_response(&self, status: u16) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.responses.get_or_create(&StatusClass { class }).inc();
    }

    pub fn login(&self, outcome: &'static str) {
        self.logins.get_or_create(&Outcome { outcome }).inc();
    }

    pub fn client_token(&self, outcome: &'static str) {
        self.client_tokens.get_or_create(&Outcome { outcome }).inc();
    }

    pub fn refresh(&self, outcome: &'static str) {
        self.refreshes.get_or_create(&Outcome { outcome }).inc();
    }

    pub fn logout(&self, outcome: &'static str) {
        self.logouts.get_or_create(&Outcome { outcome }).inc();
    }

    pub fn signup(&self) {
        self.signups.inc();
    }

    pub fn password_verified(&self) {
        self.password_verifications.inc();
    }

    pub fn revoked(&self, n: usize) {
        self.revocations.inc_by(n as u64);
    }

    pub fn banned(&self) {
        self.bans.inc();
    }

    /// Counts one audit event written (by a committed store call).
    pub fn audited(&self) {
        self.audit_appends.inc();
    }

    pub fn password_changed(&self) {
        self.password_changes.inc();
    }

    /// The text exposition, with gauges sampled now.
    pub fn render(&self, hash_queue: usize) -> String {
        self.hash_queue.set(hash_queue as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_counters() {
        let m = Metrics::default();
        m.login("succeeded");
        m.login("succeeded");
        m.record_response(503);
        let text = m.render(3);
        assert!(text.contains("bouncer_admin_logins_total{outcome=\"succeeded\"} 2"), "{text}");
        assert!(text.contains("bouncer_admin_http_responses_total{class=\"5xx\"} 1"), "{text}");
        assert!(text.contains("bouncer_admin_password_hash_queue 3"), "{text}");
    }
}
