//! End-to-end tests: the real `bouncer` binary, real HTTP, real databases.
//! Every scenario in `admin.rs` runs once on SQLite and once on PostgreSQL.

mod admin;
mod cli;
mod harness;
