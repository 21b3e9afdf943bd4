//! The operator commands that do not need a running service.

use crate::harness::{BIN, run_cli};

#[tokio::test]
async fn migrate_applies_once_and_reports_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("b.yaml");
    std::fs::write(&config, format!("admin:\n  database: sqlite://{}/b.db\n", dir.path().display())).unwrap();
    let first = run_cli(&config, &["migrate"], None).await;
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let n = bouncer_store::migrate::SQLITE.len();
    assert_eq!(
        String::from_utf8_lossy(&first.stdout).trim(),
        format!("applied {n} migration(s); schema at version {n}")
    );
    let second = run_cli(&config, &["migrate"], None).await;
    assert_eq!(
        String::from_utf8_lossy(&second.stdout).trim(),
        format!("applied 0 migration(s); schema at version {n}")
    );
}

#[tokio::test]
async fn a_bad_config_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.yaml");
    std::fs::write(&config, "admin:\n  listen: 127.0.0.1:0\n  colour: blue\n").unwrap();
    let out = run_cli(&config, &["migrate"], None).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.yaml:3:") && stderr.contains("colour"), "{stderr}");

    let missing = run_cli(&dir.path().join("nope.yaml"), &["migrate"], None).await;
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"), "missing file is named");
}

#[tokio::test]
async fn environment_overrides_the_database_url() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("b.yaml");
    std::fs::write(&config, "admin:\n  database: sqlite:///nonexistent-dir/should-not-be-used.db\n").unwrap();
    let target = dir.path().join("from-env.db");
    let out = tokio::process::Command::new(BIN)
        .args(["migrate", "--config"])
        .arg(&config)
        .env("BOUNCER_DATABASE_URL", format!("sqlite://{}", target.display()))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(target.exists(), "the environment's database was used");
}

#[tokio::test]
async fn version_is_printed() {
    let out = tokio::process::Command::new(BIN).arg("--version").output().await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("bouncer "));
}

#[tokio::test]
async fn no_migrate_refuses_an_unmigrated_database() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("b.yaml");
    std::fs::write(
        &config,
        format!(
            "admin:\n  listen: 127.0.0.1:0\n  database: sqlite://{0}/b.db\n  keys_dir: {0}/keys\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["admin", "--no-migrate", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "must not serve on an unmigrated database");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run `bouncer migrate`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn routes_check_accepts_the_example_and_names_the_line_of_a_mistake() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/routes.yaml");
    let out = tokio::process::Command::new(BIN).args(["routes", "check", example]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok — 10 route(s), 2 upstream(s)"), "config/routes.yaml has 10 routes: {stdout}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("routes.yaml");
    std::fs::write(&bad, "upstreams:\n  app: { targets: [127.0.0.1:9000] }\nroutes:\n  - name: x\n    path: /x\n    upstream: missing\n").unwrap();
    let out = tokio::process::Command::new(BIN).args(["routes", "check"]).arg(&bad).output().await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("routes.yaml:4:") && stderr.contains("\"missing\" is not defined"), "{stderr}");
}
