//! Test support (feature `testing`): a fresh PostgreSQL database per test.
//!
//! The server comes from `BOUNCER_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432`, trust auth as on CI). Each
//! [`TestDatabase`] is a uniquely named database dropped when the value is.

use tokio_postgres::NoTls;
use uuid::Uuid;

/// The server tests create their databases on.
pub fn server_url() -> String {
    std::env::var("BOUNCER_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A database that exists for the lifetime of this value.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// Creates `bouncer_test_<uuid>`. Panics with the server URL when
    /// PostgreSQL cannot be reached: tests must not silently skip.
    pub async fn create() -> Self {
        let name = format!("bouncer_test_{}", Uuid::new_v4().simple());
        let admin = admin_client().await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        Self { url: format!("{}/{name}", server_url()), name }
    }

    /// Runs a statement against the server's maintenance database, e.g. to
    /// cut this database off (`ALTER DATABASE … ALLOW_CONNECTIONS false`).
    pub async fn admin_execute(&self, sql: &str) {
        admin_client().await.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

async fn admin_client() -> tokio_postgres::Client {
    let url = format!("{}/postgres", server_url());
    let (client, conn) = tokio_postgres::connect(&url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is required for tests and did not answer: {e}"));
    tokio::spawn(conn);
    client
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context guarantees, so use a private runtime
        // on a plain thread; best effort, a leftover database is only litter.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let (client, conn) =
                    tokio_postgres::connect(&format!("{}/postgres", server_url()), NoTls).await.ok()?;
                tokio::spawn(conn);
                client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.ok()
            })
        })
        .join();
    }
}
