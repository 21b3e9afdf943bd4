//! The audit log end to end: every identity action leaves a chained record
//! with the right actor and subject and no secret, and `bouncer audit verify`
//! detects edited, deleted and reordered records.

use bouncer_core::audit::AuditRecord;
use serde_json::{Value, json};

use crate::harness::{Admin, Backend, PASSWORD, expect_json};

on_both_backends!(every_identity_action_is_audited_without_secrets, tampering_is_detected_by_audit_verify);

async fn records(admin: &Admin) -> Vec<AuditRecord> {
    admin.store().await.audit_records(0, 10_000).await.unwrap()
}

async fn every_identity_action_is_audited_without_secrets(backend: Backend) {
    let admin = Admin::start(backend).await;
    let mut secrets = vec![PASSWORD.to_owned()];
    let user = admin.signup("quinn@example.com").await;
    let id = user["id"].as_str().unwrap().to_owned();
    let wrong =
        admin.post("/auth/login", json!({"email": "quinn@example.com", "password": "wrong password!"})).await;
    assert_eq!(wrong.status(), 401);
    let ghost =
        admin.post("/auth/login", json!({"email": "ghost@example.com", "password": "wrong password!"})).await;
    assert_eq!(ghost.status(), 401);
    let login = admin
        .http
        .post(admin.url("/auth/login"))
        .header("user-agent", "audit-test/1.0")
        .header("x-request-id", "login-req-1")
        .json(&json!({"email": "quinn@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let tokens = expect_json(login, 200).await;
    let (access, refresh) =
        (tokens["access_token"].as_str().unwrap(), tokens["refresh_token"].as_str().unwrap());
    secrets.extend([access.to_owned(), refresh.to_owned()]);
    let rotated =
        expect_json(admin.post("/auth/refresh", json!({"refresh_token": refresh})).await, 200).await;
    secrets.push(rotated["refresh_token"].as_str().unwrap().to_owned());
    assert_eq!(admin.post("/auth/refresh", json!({"refresh_token": refresh})).await.status(), 401);
    let (access2, refresh2) = admin.login("quinn@example.com", PASSWORD).await;
    let new_password = "another long passphrase";
    secrets.extend([access2.clone(), refresh2.clone(), new_password.to_owned()]);
    let change = json!({"current_password": PASSWORD, "new_password": new_password});
    expect_json(admin.post_bearer("/users/me/password", &access2, change).await, 204).await;
    expect_json(admin.post("/auth/logout", json!({"refresh_token": refresh2})).await, 204).await;
    let (access3, _) = admin.login("quinn@example.com", new_password).await;
    expect_json(admin.post_bearer("/auth/logout-all", &access3, json!({})).await, 204).await;
    let cli = admin
        .cli(
            &["user", "add", "--email", "ops@example.com", "--role", "admin", "--password-stdin"],
            Some(PASSWORD),
        )
        .await;
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));

    let all = records(&admin).await;
    let row = |r: &AuditRecord| {
        (r.event.action.as_str(), r.event.actor.clone(), r.event.subject.clone(), r.event.outcome.as_str())
    };
    let me = Some(id.clone());
    let got: Vec<_> = all.iter().map(row).collect();
    let ops_id = all.last().unwrap().event.subject.clone();
    assert_eq!(
        got,
        [
            ("user.signup", me.clone(), me.clone(), "success"),
            ("auth.login.failed", None, me.clone(), "failure"),
            ("auth.login.failed", None, None, "failure"),
            ("auth.login.succeeded", me.clone(), me.clone(), "success"),
            ("auth.refresh", me.clone(), me.clone(), "success"),
            ("auth.refresh.reuse_detected", None, me.clone(), "denied"),
            ("auth.login.succeeded", me.clone(), me.clone(), "success"),
            ("user.password.changed", me.clone(), me.clone(), "success"),
            ("auth.logout", me.clone(), me.clone(), "success"),
            ("auth.login.succeeded", me.clone(), me.clone(), "success"),
            ("auth.logout", me.clone(), me.clone(), "success"),
            ("user.created", Some("cli".into()), ops_id, "success"),
        ],
        "audit trail, in order"
    );
    let login_event = &all[3].event;
    assert_eq!(login_event.request_id.as_deref(), Some("login-req-1"));
    assert_eq!(login_event.user_agent.as_deref(), Some("audit-test/1.0"));
    assert_eq!(login_event.ip.as_deref(), Some("127.0.0.1"));
    let reasons: Vec<Value> = all[1..3]
        .iter()
        .map(|r| serde_json::from_str::<Value>(&r.event.details).unwrap()["reason"].clone())
        .collect();
    assert_eq!(reasons, [json!("wrong_password"), json!("unknown_email")]);

    let dump = format!("{all:?}");
    for secret in &secrets {
        assert!(!dump.contains(secret.as_str()), "a password or token appears in the audit log");
    }

    let verify = admin.cli(&["audit", "verify"], None).await;
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "audit verify failed: {}", String::from_utf8_lossy(&verify.stderr));
    assert!(stdout.contains(&format!("intact: {} record(s)", all.len())), "{stdout}");
    let head: String = all.last().unwrap().hash.iter().map(|b| format!("{b:02x}")).collect();
    assert!(stdout.contains(&head), "the head hash is printed for anchoring: {stdout}");
}

/// Runs SQL against the instance's database as its owner (the superuser on
/// PostgreSQL, the file on SQLite).
async fn tamper(admin: &Admin, backend: Backend, sql: &str) -> Result<(), String> {
    match backend {
        Backend::Postgres => {
            let (client, conn) =
                tokio_postgres::connect(&admin.database_url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client.batch_execute(sql).await.map_err(|e| format!("{e:?}"))
        }
        Backend::Sqlite => {
            let path = admin.database_url.strip_prefix("sqlite://").unwrap().to_owned();
            let sql = sql.to_owned();
            tokio::task::spawn_blocking(move || {
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.execute_batch(&sql).map_err(|e| e.to_string())
            })
            .await
            .unwrap()
        }
    }
}

async fn verify(admin: &Admin) -> (bool, String) {
    let out = admin.cli(&["audit", "verify"], None).await;
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

async fn tampering_is_detected_by_audit_verify(backend: Backend) {
    let admin = Admin::start(backend).await;
    for i in 0..3 {
        admin.signup(&format!("t{i}@example.com")).await;
    }
    assert!(verify(&admin).await.0, "untouched log verifies");

    // The append-only guard refuses changes while it is in place.
    let refused = tamper(&admin, backend, "UPDATE audit_events SET subject = 'x' WHERE seq = 2").await;
    assert!(refused.unwrap_err().contains("append-only"), "UPDATE must be refused by the trigger");
    let refused = tamper(&admin, backend, "DELETE FROM audit_events WHERE seq = 2").await;
    assert!(refused.unwrap_err().contains("append-only"), "DELETE must be refused by the trigger");

    // An insider removes the guard (superuser on PostgreSQL, file owner on SQLite).
    let unguard = match backend {
        Backend::Postgres => "ALTER TABLE audit_events DISABLE TRIGGER USER",
        Backend::Sqlite => "DROP TRIGGER audit_events_no_update; DROP TRIGGER audit_events_no_delete",
    };
    tamper(&admin, backend, unguard).await.unwrap();

    let original = records(&admin).await[1].event.subject.clone().unwrap();
    tamper(&admin, backend, "UPDATE audit_events SET subject = 'someone-else' WHERE seq = 2").await.unwrap();
    let (ok, out) = verify(&admin).await;
    assert!(!ok && out.contains("seq 2") && out.contains("edited"), "edit must be named: {out}");
    tamper(&admin, backend, &format!("UPDATE audit_events SET subject = '{original}' WHERE seq = 2"))
        .await
        .unwrap();
    assert!(verify(&admin).await.0, "restored log verifies again");

    tamper(&admin, backend, "UPDATE audit_events SET seq = -1 WHERE seq = 2; UPDATE audit_events SET seq = 2 WHERE seq = 3; UPDATE audit_events SET seq = 3 WHERE seq = -1").await.unwrap();
    let (ok, out) = verify(&admin).await;
    assert!(!ok && out.contains("seq 2"), "reordering must be named: {out}");
    tamper(&admin, backend, "UPDATE audit_events SET seq = -1 WHERE seq = 2; UPDATE audit_events SET seq = 2 WHERE seq = 3; UPDATE audit_events SET seq = 3 WHERE seq = -1").await.unwrap();
    assert!(verify(&admin).await.0, "restored order verifies again");

    // Edits that leave a value Bouncer never writes are reported like any
    // edit — by seq and id, with the reason — not as a failure to read.
    let second = records(&admin).await[1].clone();
    let id = second.event.id.to_string();
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let at_edit = match backend {
        // SQLite keeps whatever it is given, even text in an INTEGER column.
        Backend::Sqlite => ("at", "'yesterday'".to_owned(), "yesterday"),
        // PostgreSQL's timestamptz only holds times: move it by a second.
        Backend::Postgres => ("at", "at + interval '1 second'".to_owned(), "edited"),
    };
    let original_at = match backend {
        Backend::Sqlite => (second.event.at.unix_timestamp_nanos() / 1000).to_string(),
        Backend::Postgres => "at - interval '1 second'".to_owned(),
    };
    for ((column, value, reason), restore) in [
        (
            ("action", quote("auth.login.succeeded-x"), "auth.login.succeeded-x"),
            quote(second.event.action.as_str()),
        ),
        (("details", quote("{not json"), "not JSON"), quote(&second.event.details)),
        (("outcome", quote("sideways"), "sideways"), quote(second.event.outcome.as_str())),
        (at_edit, original_at),
    ] {
        tamper(&admin, backend, &format!("UPDATE audit_events SET {column} = {value} WHERE seq = 2"))
            .await
            .unwrap();
        let (ok, out) = verify(&admin).await;
        assert!(
            !ok && out.contains("seq 2") && out.contains(&id) && out.contains(reason),
            "an edit of {column} must name seq 2, id {id} and {reason:?}: {out}"
        );
        assert!(!out.contains("database error"), "{column}: reported, not a read failure: {out}");
        tamper(&admin, backend, &format!("UPDATE audit_events SET {column} = {restore} WHERE seq = 2"))
            .await
            .unwrap();
        let (ok, out) = verify(&admin).await;
        assert!(ok, "restored {column} verifies again: {out}");
    }

    tamper(&admin, backend, "DELETE FROM audit_events WHERE seq = 2").await.unwrap();
    let (ok, out) = verify(&admin).await;
    assert!(!ok && out.contains("expected seq 2"), "deletion must be named: {out}");
}
