//! End-to-end tests: the real `bouncer` binary, real HTTP, real databases.
//! Every scenario marked `on_both_backends!` runs once on SQLite and once
//! on a fresh PostgreSQL database.

/// Generates `on_sqlite::NAME` and `on_postgres::NAME` tests calling the
/// module's `async fn NAME(backend)`.
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::Backend::Sqlite).await })*
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::Backend::Postgres).await })*
        }
    };
}

mod admin;
mod api_keys;
mod audit;
mod cli;
mod clients;
mod deploy;
mod gateway;
mod harness;
mod rbac;
mod readme;
mod replicas;
mod up;
