//! Audit append throughput on PostgreSQL, next to a baseline in the same
//! run: the same row written to a plain table without the hash chain (no
//! advisory lock, no head read, no hashing). The ratio is the chain's cost;
//! the single-writer latency difference is what it adds to each audited
//! request, such as a login. Prints figures; asserts nothing.
//!
//! `cargo bench -p bouncer-benches --bench audit_append -- [SECONDS]`

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bouncer_benches::{Latency, ms};
use bouncer_core::audit::{Action, AuditContext, Outcome};
use bouncer_store::Store;
use serde_json::json;
use time::OffsetDateTime;

const WRITERS: usize = 8;

fn main() {
    let seconds: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run(Duration::from_secs(seconds)));
}

fn ctx() -> AuditContext {
    AuditContext {
        actor: Some("0192f5a4-7c1e-7c3a-9a1b-2f4e5d6c7b8a".into()),
        ip: Some("203.0.113.7".into()),
        user_agent: Some("bench/1.0".into()),
        request_id: Some("3f2a9c1e-bench".into()),
    }
}

async fn run(duration: Duration) {
    let server =
        std::env::var("BOUNCER_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let db = format!("bouncer_bench_{}", uuid::Uuid::new_v4().simple());
    let (admin, conn) = tokio_postgres::connect(&format!("{server}/postgres"), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL is needed for this benchmark");
    tokio::spawn(conn);
    admin.batch_execute(&format!("CREATE DATABASE {db}")).await.unwrap();
    let url = format!("{server}/{db}");
    let store: Arc<dyn Store> = bouncer_store::open(&url, WRITERS + 2).await.unwrap();
    store.migrate().await.unwrap();
    let (plain, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    plain
        .batch_execute(
            "CREATE TABLE plain_events (id uuid PRIMARY KEY, at timestamptz, actor text, action text, subject text,
                ip text, user_agent text, request_id text, outcome text, details text)",
        )
        .await
        .unwrap();

    println!("# audit append benchmark — PostgreSQL, {WRITERS} writers, {}s per phase", duration.as_secs());
    let plain_rate = throughput(duration, WRITERS, |_| plain_writer(&url)).await;
    let chained_rate = throughput(duration, WRITERS, |_| {
        let store = store.clone();
        async move { Arc::new(move || append_one(store.clone())) as Writer }
    })
    .await;
    // Batches of ten per transaction, as the gateway's denial stream will append.
    let batched_rate = 10.0
        * throughput(duration, WRITERS, |_| {
            let store = store.clone();
            async move { Arc::new(move || append_batch(store.clone())) as Writer }
        })
        .await;
    let mut plain_one = latencies(duration, plain_writer(&url).await).await;
    let store_one = store.clone();
    let mut chained_one = latencies(duration, Arc::new(move || append_one(store_one.clone()))).await;
    let (p, c) = (Latency::of(&mut plain_one).unwrap(), Latency::of(&mut chained_one).unwrap());
    let verified =
        bouncer_store::verify_audit_chain(&*store).await.unwrap().expect("chain intact after the run");

    println!();
    println!("| scenario | events/s | p50 ms (1 writer) | p99 ms (1 writer) |");
    println!("|---|---:|---:|---:|");
    println!(
        "| plain insert, own transaction (baseline) | {plain_rate:.0} | {} | {} |",
        ms(p.p50),
        ms(p.p99)
    );
    println!("| chained audit append, own transaction | {chained_rate:.0} | {} | {} |", ms(c.p50), ms(c.p99));
    println!("| chained audit append, 10 per transaction | {batched_rate:.0} | — | — |");
    println!();
    println!("chained / plain throughput: {:.2}", chained_rate / plain_rate);
    println!(
        "added per audited request (p50, one writer): {:.3} ms",
        (c.p50.as_secs_f64() - p.p50.as_secs_f64()) * 1e3
    );
    println!("chain verified afterwards: {} records, intact", verified.0);
    println!("target: ≥ 2000 chained events/s");

    drop(plain);
    drop(admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await);
}

type Op = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
type Writer = Arc<dyn Fn() -> Op + Send + Sync>;

fn append_one(store: Arc<dyn Store>) -> Op {
    Box::pin(async move {
        let e = ctx().event(
            OffsetDateTime::now_utc(),
            Action::LoginSucceeded,
            Some("subject".into()),
            Outcome::Success,
            &json!({"session_id": uuid::Uuid::now_v7()}),
        );
        store.append_audit(&[e]).await.unwrap();
    })
}

fn append_batch(store: Arc<dyn Store>) -> Op {
    Box::pin(async move {
        let events: Vec<_> = (0..10)
            .map(|i| {
                ctx().event(
                    OffsetDateTime::now_utc(),
                    Action::GatewayDenied,
                    Some(format!("k{i}")),
                    Outcome::Denied,
                    &json!({"status": 429}),
                )
            })
            .collect();
        store.append_audit(&events).await.unwrap();
    })
}

async fn plain_writer(url: &str) -> Writer {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let client = Arc::new(tokio::sync::Mutex::new(client));
    Arc::new(move || {
        let client = client.clone();
        Box::pin(async move {
            let mut client = client.lock().await;
            let tx = client.transaction().await.unwrap();
            let e = ctx().event(
                OffsetDateTime::now_utc(),
                Action::LoginSucceeded,
                Some("subject".into()),
                Outcome::Success,
                &json!({"session_id": uuid::Uuid::now_v7()}),
            );
            tx.execute(
                "INSERT INTO plain_events VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                &[
                    &e.id,
                    &e.at,
                    &e.actor,
                    &e.action.as_str(),
                    &e.subject,
                    &e.ip,
                    &e.user_agent,
                    &e.request_id,
                    &e.outcome.as_str(),
                    &e.details,
                ],
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
        })
    })
}

/// Operations per second of `writers` tasks, each with its own writer.
async fn throughput<F, Fut>(duration: Duration, writers: usize, make: F) -> f64
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Writer>,
{
    let mut ops = Vec::new();
    for i in 0..writers {
        ops.push(make(i).await);
    }
    let started = Instant::now();
    let tasks: Vec<_> = ops
        .into_iter()
        .map(|op| {
            tokio::spawn(async move {
                let mut n = 0u64;
                while started.elapsed() < duration {
                    op().await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Latencies of one writer running `op` back to back.
async fn latencies(duration: Duration, op: Writer) -> Vec<Duration> {
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < duration {
        let t = Instant::now();
        op().await;
        samples.push(t.elapsed());
    }
    samples
}
