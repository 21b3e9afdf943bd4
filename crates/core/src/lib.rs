//! Pure types and decisions shared by every Bouncer service.
//!
//! Nothing in this crate performs I/O or reads a clock: callers pass file
//! contents, environment values and `now` in, and get a value or a decision
//! back. That keeps the rules here fast to unit-test and safe to call on the
//! gateway's hot path.
#![forbid(unsafe_code)]

pub mod audit;
pub mod bucket;
pub mod claims;
pub mod client_ip;
pub mod config;
pub mod credential;
pub mod duration;
pub mod email;
pub mod jwt;
pub mod password;
pub mod path;
pub mod problem;
pub mod revocation;
pub mod role;
pub mod routes;
pub mod throttle;
pub mod token;

pub use duration::ConfigDuration;
