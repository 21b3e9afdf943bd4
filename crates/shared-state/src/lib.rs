//! State that every replica must agree on, each an enum over two backends: an
//! in-process one (embedded mode, tests) and one on Redis. This is
//! the only crate that knows Redis (fred).
//!
//! - [`limiter`]: token buckets (rate limits), shared across gateways.
//! - [`revocation`]: the bus through which the admin service announces
//!   revocations the moment their transaction commits.
//! - [`denials`]: the gateway's 401/403/429 decisions on their way to the
//!   audit log.
#![forbid(unsafe_code)]

pub mod denials;
pub mod keys;
pub mod limiter;
pub mod memory;
pub mod redis;
pub mod revocation;
#[cfg(feature = "testing")]
pub mod testing;

pub use redis::{Redis, RedisError};
pub use revocation::{InProcessBus, RedisBus, RevocationBus};
