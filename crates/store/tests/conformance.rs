//! The store conformance suite: every test runs against SQLite and against
//! PostgreSQL (a fresh database per test), so the two backends cannot drift.

use std::{sync::Arc, time::Duration};

use bouncer_core::{
    audit::{Action, AuditContext, Outcome},
    credential::{ApiKey, ClientSecret},
    email::Email,
    revocation::{Revocation, RevokeReason},
    throttle::{AttemptEnd, ThrottleDecision},
    token::{RefreshToken, TokenHash},
};
use bouncer_store::{
    AuditFilter, LoginAttempt, Migration, NewApiKey, NewClient, NewSession, NewUser, Role, Rotation,
    SettledAttempt, Store, StoreError, UserFilter, UserOrigin, postgres::PgStore, sqlite::SqliteStore,
    testing::TestDatabase,
};
use serde_json::json;
use time::{OffsetDateTime, macros::datetime};
use uuid::Uuid;

/// Keeps whatever backs a store alive for the test's duration.
#[allow(dead_code)]
enum Guard {
    Sqlite(tempfile::TempDir),
    Postgres(TestDatabase),
}

async fn sqlite() -> (Arc<dyn Store>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("nested/bouncer.db")).await.unwrap();
    store.migrate().await.unwrap();
    (Arc::new(store), Guard::Sqlite(dir))
}

async fn postgres() -> (Arc<dyn Store>, Guard) {
    let db = TestDatabase::create().await;
    let store = PgStore::connect(&db.url, 8).unwrap();
    store.migrate().await.unwrap();
    (Arc::new(store), Guard::Postgres(db))
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let (store, _guard) = super::sqlite().await;
                super::$test(store).await;
            })*
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let (store, _guard) = super::postgres().await;
                super::$test(store).await;
            })*
        }
    };
}

conformance!(
    migrate_is_idempotent_and_seeds_builtin_roles,
    users_are_unique_by_case_folded_email,
    unknown_role_creates_nothing,
    refresh_tokens_rotate_once,
    reused_refresh_token_revokes_the_session,
    concurrent_rotation_has_exactly_one_winner,
    expired_session_does_not_rotate_or_spend,
    logout_revokes_only_that_session,
    logout_all_revokes_every_session_and_sets_revoked_before,
    password_change_keeps_the_current_session,
    login_attempts_are_reserved_and_throttled,
    parallel_attempts_cannot_exceed_the_limit,
    a_session_settles_its_login_attempt,
    every_change_is_audited_in_one_intact_chain,
    concurrent_appends_form_one_chain,
    redelivered_events_are_appended_once,
    ping_answers,
    roles_are_created_sorted_bytewise_and_deleted,
    removing_a_role_revokes_sessions_adding_does_not,
    bans_revoke_and_unbans_restore,
    deleting_a_user_keeps_the_audit_history,
    users_page_by_id_and_filter_by_email_prefix,
    audit_pages_newest_first_with_filters,
    clients_are_created_rotated_with_overlap_and_deleted,
    deleting_a_role_counts_and_revokes_its_clients,
    api_keys_belong_to_their_owner_and_grant_what_both_hold,
);

const T0: OffsetDateTime = datetime!(2026-03-01 10:00 UTC);

fn token(seed: u8) -> RefreshToken {
    RefreshToken::from_random([seed; 32])
}

async fn new_user(store: &Arc<dyn Store>, email: &str) -> bouncer_store::User {
    store
        .create_user(
            NewUser {
                id: Uuid::now_v7(),
                email: Email::parse(email).unwrap(),
                password_hash: "$argon2id$fake".into(),
                roles: vec!["user".into()],
                now: T0,
                origin: UserOrigin::Operator,
            },
            &ctx(),
        )
        .await
        .unwrap()
}

async fn new_session(store: &Arc<dyn Store>, user_id: Uuid, seed: u8) -> Uuid {
    let id = Uuid::now_v7();
    store
        .create_session(
            NewSession {
                id,
                user_id,
                refresh_token: token(seed).hash(),
                now: T0,
                expires_at: T0 + Duration::from_secs(3600),
                attempt: None,
            },
            &ctx(),
        )
        .await
        .unwrap();
    id
}

fn ctx() -> AuditContext {
    AuditContext { actor: Some("conformance".into()), ip: Some("192.0.2.1".into()), ..Default::default() }
}

/// A failed login of nobody in particular (the throttle tests need the rows, not the user).
fn wrong_password() -> AttemptEnd<'static> {
    AttemptEnd::UnknownEmail { email_key: "someone@example.com" }
}

async fn migrate_is_idempotent_and_seeds_builtin_roles(store: Arc<dyn Store>) {
    assert_eq!(store.pending_migrations().await.unwrap(), Vec::<u32>::new());
    let again = store.migrate().await.unwrap();
    assert!(again.applied.is_empty(), "second run applied {:?}", again.applied);
    assert!(again.current >= 1);
    let roles: Vec<_> = store.roles().await.unwrap().into_iter().map(|r| (r.name, r.builtin)).collect();
    assert_eq!(roles, [("admin".into(), true), ("service".into(), true), ("user".into(), true)]);
}

async fn users_are_unique_by_case_folded_email(store: Arc<dyn Store>) {
    let user = new_user(&store, "  Alice@Example.com ").await;
    assert_eq!(user.email, "Alice@Example.com");
    assert_eq!(user.roles, ["user"]);
    assert_eq!(user.created_at, T0);
    let dup = store
        .create_user(
            NewUser {
                id: Uuid::now_v7(),
                email: Email::parse("ALICE@example.COM").unwrap(),
                password_hash: "x".into(),
                roles: vec![],
                now: T0,
                origin: UserOrigin::Operator,
            },
            &ctx(),
        )
        .await;
    assert!(matches!(dup, Err(StoreError::EmailTaken)), "expected EmailTaken, got {dup:?}");
    let found = store.credential_by_email("alice@example.com").await.unwrap().expect("lookup by key");
    assert_eq!(found.user, user);
    assert_eq!(found.password_hash, "$argon2id$fake");
    assert_eq!(store.user(user.id).await.unwrap(), Some(user.clone()));
    assert_eq!(store.user(Uuid::now_v7()).await.unwrap(), None);
    assert!(store.replace_password_hash(user.id, "$argon2id$fake", "$argon2id$new").await.unwrap());
    assert_eq!(store.credential(user.id).await.unwrap().unwrap().password_hash, "$argon2id$new");
    assert!(
        !store.replace_password_hash(user.id, "$argon2id$fake", "$argon2id$stale").await.unwrap(),
        "a rehash of a hash that changed meanwhile must not apply"
    );
    assert_eq!(store.credential(user.id).await.unwrap().unwrap().password_hash, "$argon2id$new");
}

async fn unknown_role_creates_nothing(store: Arc<dyn Store>) {
    let result = store
        .create_user(
            NewUser {
                id: Uuid::now_v7(),
                email: Email::parse("bob@example.com").unwrap(),
                password_hash: "x".into(),
                roles: vec!["user".into(), "wizard".into()],
                now: T0,
                origin: UserOrigin::Operator,
            },
            &ctx(),
        )
        .await;
    assert!(matches!(&result, Err(StoreError::UnknownRole(r)) if r == "wizard"), "got {result:?}");
    assert_eq!(store.credential_by_email("bob@example.com").await.unwrap(), None);
}

async fn refresh_tokens_rotate_once(store: Arc<dyn Store>) {
    let user = new_user(&store, "carol@example.com").await;
    let sid = new_session(&store, user.id, 1).await;
    let later = T0 + Duration::from_secs(60);
    match store.rotate_refresh_token(token(1).hash(), token(2).hash(), later, &ctx()).await.unwrap() {
        Rotation::Rotated { session, user: u } => {
            assert_eq!(session.id, sid);
            assert_eq!(
                session.expires_at,
                T0 + Duration::from_secs(3600),
                "rotation must not extend the session"
            );
            assert_eq!(u.id, user.id);
        }
        other => panic!("expected Rotated, got {other:?}"),
    }
    let next = store.rotate_refresh_token(token(2).hash(), token(3).hash(), later, &ctx()).await.unwrap();
    assert!(matches!(next, Rotation::Rotated { .. }), "the rotated-to token must work, got {next:?}");
    let unknown =
        store.rotate_refresh_token(token(99).hash(), token(100).hash(), later, &ctx()).await.unwrap();
    assert_eq!(unknown, Rotation::Invalid);
    let (session, _) = store.session(sid).await.unwrap().unwrap();
    assert!(session.is_live(later));
}

async fn reused_refresh_token_revokes_the_session(store: Arc<dyn Store>) {
    let user = new_user(&store, "dave@example.com").await;
    let sid = new_session(&store, user.id, 1).await;
    let now = T0 + Duration::from_secs(10);
    store.rotate_refresh_token(token(1).hash(), token(2).hash(), now, &ctx()).await.unwrap();
    let replay = store.rotate_refresh_token(token(1).hash(), token(3).hash(), now, &ctx()).await.unwrap();
    let reuse = Revocation::session(sid, user.id, now, RevokeReason::ReuseDetected);
    assert_eq!(replay, Rotation::Reused { session_id: sid, user_id: user.id, revocation: reuse.clone() });
    assert_eq!(store.revocations_since(T0).await.unwrap(), [reuse], "the reuse is recorded for gateways");
    let (session, _) = store.session(sid).await.unwrap().unwrap();
    assert_eq!(session.revoked_at, Some(now));
    let legit = store.rotate_refresh_token(token(2).hash(), token(4).hash(), now, &ctx()).await.unwrap();
    assert_eq!(legit, Rotation::Invalid, "the family must die with the reuse");
}

async fn concurrent_rotation_has_exactly_one_winner(store: Arc<dyn Store>) {
    let user = new_user(&store, "erin@example.com").await;
    new_session(&store, user.id, 1).await;
    let now = T0 + Duration::from_secs(5);
    let tasks: Vec<_> = (0..8u8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store.rotate_refresh_token(token(1).hash(), token(10 + i).hash(), now, &ctx()).await
            })
        })
        .collect();
    let mut rotated = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Rotation::Rotated { .. } => rotated += 1,
            Rotation::Reused { .. } => {}
            Rotation::Invalid => panic!("a concurrent loser must be seen as reuse, not as unknown"),
        }
    }
    assert_eq!(rotated, 1, "exactly one of eight concurrent rotations may win");
}

async fn expired_session_does_not_rotate_or_spend(store: Arc<dyn Store>) {
    let user = new_user(&store, "frank@example.com").await;
    new_session(&store, user.id, 1).await;
    let after = T0 + Duration::from_secs(3600);
    assert_eq!(
        store.rotate_refresh_token(token(1).hash(), token(2).hash(), after, &ctx()).await.unwrap(),
        Rotation::Invalid
    );
    // The refused attempt rolled back: presenting it again is not "reuse".
    assert_eq!(
        store.rotate_refresh_token(token(1).hash(), token(3).hash(), after, &ctx()).await.unwrap(),
        Rotation::Invalid
    );
}

async fn logout_revokes_only_that_session(store: Arc<dyn Store>) {
    let user = new_user(&store, "gina@example.com").await;
    let a = new_session(&store, user.id, 1).await;
    let b = new_session(&store, user.id, 2).await;
    let now = T0 + Duration::from_secs(1);
    let logout = Revocation::session(a, user.id, now, RevokeReason::Logout);
    assert_eq!(
        store.revoke_session_by_token(token(1).hash(), now, &ctx()).await.unwrap(),
        Some(logout.clone())
    );
    assert_eq!(
        store.revoke_session_by_token(token(1).hash(), now, &ctx()).await.unwrap().map(|r| r.id),
        Some(a),
        "idempotent"
    );
    assert_eq!(store.revocations_since(T0).await.unwrap()[0], logout);
    assert_eq!(store.revoke_session_by_token(token(77).hash(), now, &ctx()).await.unwrap(), None);
    assert!(!store.session(a).await.unwrap().unwrap().0.is_live(now));
    assert!(store.session(b).await.unwrap().unwrap().0.is_live(now));
    assert_eq!(
        store.rotate_refresh_token(token(1).hash(), token(3).hash(), now, &ctx()).await.unwrap(),
        Rotation::Invalid
    );
}

async fn logout_all_revokes_every_session_and_sets_revoked_before(store: Arc<dyn Store>) {
    let user = new_user(&store, "hank@example.com").await;
    let mut sids = vec![new_session(&store, user.id, 1).await, new_session(&store, user.id, 2).await];
    let other = new_user(&store, "ivy@example.com").await;
    let bystander = new_session(&store, other.id, 3).await;
    let now = T0 + Duration::from_millis(2_500);
    let revoked = store.revoke_all_sessions(user.id, now, &ctx()).await.unwrap();
    assert_eq!(revoked[0], Revocation::user(user.id, now, RevokeReason::LogoutAll));
    let mut revoked: Vec<Uuid> = revoked[1..].iter().map(|r| r.id).collect();
    revoked.sort();
    sids.sort();
    assert_eq!(revoked, sids);
    assert_eq!(store.revocations_since(T0).await.unwrap().len(), 3, "user + two sessions recorded");
    let after = store.user(user.id).await.unwrap().unwrap();
    assert_eq!(after.revoked_before, Some(now));
    assert!(after.token_revoked(T0.unix_timestamp() + 1));
    assert!(!after.token_revoked(T0.unix_timestamp() + 2), "same-second tokens are caught by their sid");
    assert!(store.session(bystander).await.unwrap().unwrap().0.is_live(now));
}

async fn password_change_keeps_the_current_session(store: Arc<dyn Store>) {
    let user = new_user(&store, "jo@example.com").await;
    let keep = new_session(&store, user.id, 1).await;
    let other = new_session(&store, user.id, 2).await;
    let now = T0 + Duration::from_secs(3);
    let revoked = store.change_password(user.id, "$argon2id$changed", Some(keep), now, &ctx()).await.unwrap();
    assert_eq!(revoked, [Revocation::session(other, user.id, now, RevokeReason::PasswordChanged)]);
    assert!(store.session(keep).await.unwrap().unwrap().0.is_live(now));
    assert_eq!(store.credential(user.id).await.unwrap().unwrap().password_hash, "$argon2id$changed");
    let all = store.change_password(user.id, "$argon2id$again", None, now, &ctx()).await.unwrap();
    assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), [keep]);
}

fn attempt(keys: &[(&str, u32)], now: OffsetDateTime) -> LoginAttempt {
    LoginAttempt {
        id: Uuid::now_v7(),
        keys: keys.iter().map(|(k, m)| (k.to_string(), *m)).collect(),
        window: Duration::from_secs(900),
        now,
    }
}

async fn login_attempts_are_reserved_and_throttled(store: Arc<dyn Store>) {
    let keys = [("account:a@example.com", 3), ("ip:192.0.2.1", 10)];
    // Three failed attempts use up the account's allowance...
    for s in 0..3 {
        let a = attempt(&keys, T0 + Duration::from_secs(s * 60));
        assert_eq!(store.begin_login_attempt(&a).await.unwrap(), ThrottleDecision::Allow);
        store.finish_login_attempt(a.id, wrong_password(), T0, &ctx()).await.unwrap();
    }
    // ...so the fourth is refused until the first failure leaves the window.
    let refused = store.begin_login_attempt(&attempt(&keys, T0 + Duration::from_secs(300))).await.unwrap();
    assert_eq!(refused, ThrottleDecision::Deny { retry_after_secs: 600 });
    let later = store.begin_login_attempt(&attempt(&keys, T0 + Duration::from_secs(900))).await.unwrap();
    assert_eq!(later, ThrottleDecision::Allow, "a failure leaving the window frees one attempt");
    // The IP key saw every allowed attempt; another account from it is fine.
    let other = attempt(&[("account:b@example.com", 3), ("ip:192.0.2.1", 10)], T0 + Duration::from_secs(901));
    assert_eq!(store.begin_login_attempt(&other).await.unwrap(), ThrottleDecision::Allow);
    // A forgiven attempt (right password) leaves no failure behind.
    store.finish_login_attempt(other.id, AttemptEnd::RightCurrentPassword, T0, &ctx()).await.unwrap();
    for _ in 0..3 {
        let a = attempt(&[("account:b@example.com", 1)], T0 + Duration::from_secs(902));
        assert_eq!(store.begin_login_attempt(&a).await.unwrap(), ThrottleDecision::Allow);
        store.finish_login_attempt(a.id, AttemptEnd::RightCurrentPassword, T0, &ctx()).await.unwrap();
    }
}

async fn parallel_attempts_cannot_exceed_the_limit(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .begin_login_attempt(&attempt(
                        &[("account:c@example.com", 5), ("ip:198.51.100.1", 50)],
                        T0,
                    ))
                    .await
            })
        })
        .collect();
    let mut allowed = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() == ThrottleDecision::Allow {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 5, "exactly the limit of parallel guesses may proceed");
}

async fn a_session_settles_its_login_attempt(store: Arc<dyn Store>) {
    let user = new_user(&store, "dora@example.com").await;
    let key = "account:dora@example.com";
    for _ in 0..2 {
        let a = attempt(&[(key, 3)], T0);
        store.begin_login_attempt(&a).await.unwrap();
        store.finish_login_attempt(a.id, wrong_password(), T0, &ctx()).await.unwrap();
    }
    let winning = attempt(&[(key, 3), ("ip:192.0.2.9", 1)], T0);
    assert_eq!(store.begin_login_attempt(&winning).await.unwrap(), ThrottleDecision::Allow);
    store
        .create_session(
            NewSession {
                id: Uuid::now_v7(),
                user_id: user.id,
                refresh_token: token(40).hash(),
                now: T0,
                expires_at: T0 + Duration::from_secs(3600),
                attempt: Some(SettledAttempt { id: winning.id, account_key: key.into() }),
            },
            &ctx(),
        )
        .await
        .unwrap();
    // The account starts afresh and the winning attempt's IP row is gone.
    for _ in 0..3 {
        let a = attempt(&[(key, 3)], T0);
        assert_eq!(store.begin_login_attempt(&a).await.unwrap(), ThrottleDecision::Allow);
    }
    assert_eq!(
        store.begin_login_attempt(&attempt(&[("ip:192.0.2.9", 1)], T0)).await.unwrap(),
        ThrottleDecision::Allow
    );
}

async fn every_change_is_audited_in_one_intact_chain(store: Arc<dyn Store>) {
    let user = new_user(&store, "abe@example.com").await;
    let sid = new_session(&store, user.id, 1).await;
    let now = T0 + Duration::from_secs(1);
    store.rotate_refresh_token(token(1).hash(), token(2).hash(), now, &ctx()).await.unwrap();
    store.rotate_refresh_token(token(1).hash(), token(3).hash(), now, &ctx()).await.unwrap();
    let other = new_session(&store, user.id, 4).await;
    store.revoke_session_by_token(token(4).hash(), now, &ctx()).await.unwrap();
    store.change_password(user.id, "x", None, now, &ctx()).await.unwrap();
    store.revoke_all_sessions(user.id, now, &ctx()).await.unwrap();
    // A refused change records nothing.
    assert_eq!(
        store.rotate_refresh_token(token(77).hash(), token(78).hash(), now, &ctx()).await.unwrap(),
        Rotation::Invalid
    );

    let records = store.audit_records(0, 100).await.unwrap();
    let actions: Vec<&str> = records.iter().map(|r| r.event.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "user.created",
            "auth.login.succeeded",
            "auth.refresh",
            "auth.refresh.reuse_detected",
            "auth.login.succeeded",
            "auth.logout",
            "user.password.changed",
            "auth.logout",
        ]
    );
    let refresh = &records[2].event;
    assert_eq!(refresh.actor.as_deref(), Some(user.id.to_string().as_str()), "a refresh is done by its user");
    assert_eq!(refresh.subject.as_deref(), Some(user.id.to_string().as_str()));
    assert_eq!(refresh.details, format!("{{\"session_id\":\"{sid}\"}}"));
    assert_eq!(refresh.ip.as_deref(), Some("192.0.2.1"));
    assert_eq!(records[3].event.outcome, Outcome::Denied);
    assert_eq!(records[5].event.details, format!("{{\"session_id\":\"{other}\"}}"));
    let (count, head) = bouncer_store::verify_audit_chain(&*store).await.unwrap().unwrap();
    assert_eq!((count, head), (8, records[7].hash));
    // Paging: after a seq, in order.
    let tail = store.audit_records(6, 100).await.unwrap();
    assert_eq!(tail.iter().map(|r| r.seq).collect::<Vec<_>>(), [7, 8]);
}

async fn concurrent_appends_form_one_chain(store: Arc<dyn Store>) {
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..63 {
                    let e = ctx().event(
                        T0,
                        Action::GatewayDenied,
                        Some(format!("w{w}-{i}")),
                        Outcome::Denied,
                        &json!({}),
                    );
                    store.append_audit(&[e]).await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let (count, _) = bouncer_store::verify_audit_chain(&*store).await.unwrap().expect("one intact chain");
    assert_eq!(count, 8 * 63);
}

async fn redelivered_events_are_appended_once(store: Arc<dyn Store>) {
    let event =
        |n: u32| ctx().event(T0, Action::GatewayDenied, Some(format!("s{n}")), Outcome::Denied, &json!({}));
    let first: Vec<_> = (0..3).map(event).collect();
    assert_eq!(store.append_audit_once(&first).await.unwrap(), 3);
    // A redelivery overlapping the first batch, from two consumers at once.
    let mut second = first[1..].to_vec();
    second.push(event(4));
    let (a, b) = tokio::join!(store.append_audit_once(&second), store.append_audit_once(&second));
    assert_eq!(a.unwrap() + b.unwrap(), 1, "only the one new event is written, once");
    let (count, _) = bouncer_store::verify_audit_chain(&*store).await.unwrap().expect("one intact chain");
    assert_eq!(count, 4);
}

fn role(name: &str) -> Role {
    Role { name: name.into(), description: format!("{name} role"), builtin: false }
}

async fn roles_are_created_sorted_bytewise_and_deleted(store: Arc<dyn Store>) {
    for name in ["ab", "a_c", "a-b"] {
        store.create_role(&role(name), T0, &ctx()).await.unwrap();
    }
    let dup = store.create_role(&role("ab"), T0, &ctx()).await;
    assert!(matches!(dup, Err(StoreError::RoleExists)), "got {dup:?}");
    let user = new_user(&store, "rita@example.com").await;
    let (user, revoked) = store
        .set_roles(user.id, &["ab".into(), "user".into(), "a_c".into(), "a-b".into()], T0, &ctx())
        .await
        .unwrap();
    // Locale collations ignore '-' and '_'; both stores sort by bytes.
    assert_eq!(user.roles, ["a-b", "a_c", "ab", "user"]);
    assert!(revoked.is_empty(), "adding roles revokes nothing");
    assert!(matches!(store.delete_role("user", false, T0, &ctx()).await, Err(StoreError::BuiltinRole)));
    assert!(matches!(store.delete_role("nope", false, T0, &ctx()).await, Err(StoreError::NotFound)));
    assert!(matches!(store.delete_role("ab", false, T0, &ctx()).await, Err(StoreError::RoleInUse(1))));
    let sid = new_session(&store, user.id, 5).await;
    let revoked = store.delete_role("ab", true, T0, &ctx()).await.unwrap();
    assert!(revoked.iter().any(|r| r.id == sid), "forcing revokes the holders' sessions");
    assert_eq!(store.user(user.id).await.unwrap().unwrap().roles, ["a-b", "a_c", "user"]);
    store.delete_role("a_c", true, T0, &ctx()).await.unwrap();
    let names: Vec<String> = store.roles().await.unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["a-b", "admin", "service", "user"]);
}

async fn removing_a_role_revokes_sessions_adding_does_not(store: Arc<dyn Store>) {
    let user = new_user(&store, "sam@example.com").await;
    let sid = new_session(&store, user.id, 1).await;
    let (after, revoked) =
        store.set_roles(user.id, &["user".into(), "admin".into()], T0, &ctx()).await.unwrap();
    assert_eq!(
        (after.roles.as_slice(), revoked.len()),
        (["admin".to_string(), "user".to_string()].as_slice(), 0)
    );
    assert!(store.session(sid).await.unwrap().unwrap().0.is_live(T0));
    let later = T0 + Duration::from_secs(5);
    let (after, revoked) = store.set_roles(user.id, &["user".into()], later, &ctx()).await.unwrap();
    assert_eq!(after.roles, ["user"]);
    assert_eq!(revoked[0], Revocation::user(user.id, later, RevokeReason::RolesRemoved));
    assert!(!store.session(sid).await.unwrap().unwrap().0.is_live(later));
    let unknown = store.set_roles(user.id, &["wizard".into()], later, &ctx()).await;
    assert!(matches!(&unknown, Err(StoreError::UnknownRole(r)) if r == "wizard"), "got {unknown:?}");
    assert_eq!(
        store.user(user.id).await.unwrap().unwrap().roles,
        ["user"],
        "a refused change changes nothing"
    );
    assert!(matches!(store.set_roles(Uuid::now_v7(), &[], later, &ctx()).await, Err(StoreError::NotFound)));
}

async fn bans_revoke_and_unbans_restore(store: Arc<dyn Store>) {
    let user = new_user(&store, "tia@example.com").await;
    let sid = new_session(&store, user.id, 1).await;
    let now = T0 + Duration::from_secs(7);
    let (banned, revoked) = store.ban_user(user.id, "spam", now, &ctx()).await.unwrap();
    assert_eq!((banned.banned_at, banned.ban_reason.as_deref()), (Some(now), Some("spam")));
    assert!(revoked.iter().any(|r| r.id == sid));
    assert_eq!(
        store.rotate_refresh_token(token(1).hash(), token(2).hash(), now, &ctx()).await.unwrap(),
        Rotation::Invalid
    );
    assert!(matches!(store.ban_user(user.id, "again", now, &ctx()).await, Err(StoreError::AlreadyBanned)));
    let unbanned = store.unban_user(user.id, now, &ctx()).await.unwrap();
    assert_eq!((unbanned.banned_at, unbanned.ban_reason), (None, None));
    assert!(matches!(store.ban_user(Uuid::now_v7(), "x", now, &ctx()).await, Err(StoreError::NotFound)));
}

async fn deleting_a_user_keeps_the_audit_history(store: Arc<dyn Store>) {
    let user = new_user(&store, "uma@example.com").await;
    new_session(&store, user.id, 1).await;
    let revoked = store.delete_user(user.id, T0, &ctx()).await.unwrap();
    assert_eq!(revoked.len(), 2, "the user and their session");
    assert_eq!(store.user(user.id).await.unwrap(), None);
    assert!(matches!(store.delete_user(user.id, T0, &ctx()).await, Err(StoreError::NotFound)));
    let records = store.audit_records(0, 100).await.unwrap();
    assert_eq!(records.last().unwrap().event.action, Action::UserDeleted);
    assert_eq!(records.len(), 3);
    assert!(bouncer_store::verify_audit_chain(&*store).await.unwrap().is_ok());
    // Revocations outlive the user.
    assert_eq!(store.revocations_since(T0 - Duration::from_secs(1)).await.unwrap().len(), 2);
}

async fn users_page_by_id_and_filter_by_email_prefix(store: Arc<dyn Store>) {
    for email in ["a1@x.com", "a2@x.com", "b1@x.com", "a_3@x.com", "a%4@x.com"] {
        new_user(&store, email).await;
    }
    let page = |prefix: Option<&str>, after, limit| UserFilter {
        email_prefix: prefix.map(str::to_owned),
        after,
        limit,
    };
    let first = store.list_users(&page(None, None, 2)).await.unwrap();
    let second = store.list_users(&page(None, Some(first[1].id), 10)).await.unwrap();
    let emails = |v: &[bouncer_store::User]| v.iter().map(|u| u.email.clone()).collect::<Vec<_>>();
    assert_eq!(emails(&first), ["a1@x.com", "a2@x.com"]);
    assert_eq!(emails(&second), ["b1@x.com", "a_3@x.com", "a%4@x.com"]);
    assert_eq!(
        emails(&store.list_users(&page(Some("a"), None, 10)).await.unwrap()),
        ["a1@x.com", "a2@x.com", "a_3@x.com", "a%4@x.com"]
    );
    // LIKE wildcards in the prefix are literal.
    assert_eq!(emails(&store.list_users(&page(Some("a_"), None, 10)).await.unwrap()), ["a_3@x.com"]);
    assert_eq!(emails(&store.list_users(&page(Some("a%"), None, 10)).await.unwrap()), ["a%4@x.com"]);
}

async fn audit_pages_newest_first_with_filters(store: Arc<dyn Store>) {
    let a = new_user(&store, "va@example.com").await;
    let b = new_user(&store, "vb@example.com").await;
    store.ban_user(a.id, "x", T0 + Duration::from_secs(10), &ctx()).await.unwrap();
    let all = store.list_audit(&AuditFilter { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 2, 1], "newest first");
    let page = store
        .list_audit(&AuditFilter { limit: 10, before_seq: Some(3), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 1]);
    let banned = AuditFilter { action: Some("user.banned".into()), limit: 10, ..Default::default() };
    assert_eq!(store.list_audit(&banned).await.unwrap()[0].event.subject, Some(a.id.to_string()));
    let recent = AuditFilter { since: Some(T0 + Duration::from_secs(5)), limit: 10, ..Default::default() };
    assert_eq!(store.list_audit(&recent).await.unwrap().len(), 1);
    let old = AuditFilter {
        until: Some(T0 + Duration::from_secs(5)),
        actor: Some("conformance".into()),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(store.list_audit(&old).await.unwrap().len(), 2);
    let _ = b;
}

async fn ping_answers(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
}

// Backend-specific: a failing migration must leave the schema as it was.

static BROKEN_PG: [Migration; 2] = [
    bouncer_store::migrate::POSTGRES[0],
    Migration {
        version: 2,
        name: "broken",
        sql: "CREATE TABLE canary (x int); SELECT * FROM no_such_table;",
    },
];
static BROKEN_SQLITE: [Migration; 2] = [
    bouncer_store::migrate::SQLITE[0],
    Migration {
        version: 2,
        name: "broken",
        sql: "CREATE TABLE canary (x int); SELECT * FROM no_such_table;",
    },
];

#[tokio::test]
async fn failed_postgres_migration_leaves_the_schema_unchanged() {
    let db = TestDatabase::create().await;
    let store = PgStore::connect(&db.url, 2).unwrap();
    let err = store.migrate_with(&BROKEN_PG).await.unwrap_err();
    assert!(matches!(err, StoreError::MigrationFailed { version: 2, .. }), "got {err:?}");
    assert!(err.to_string().contains("no_such_table"), "{err}");
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let canary: bool =
        client.query_one("SELECT to_regclass('canary') IS NOT NULL", &[]).await.unwrap().get(0);
    assert!(!canary, "the failed migration's table must not exist");
    let versions: Vec<i32> = client
        .query("SELECT version FROM schema_migrations", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1]);
    // The real list still applies cleanly afterwards.
    assert_eq!(store.migrate().await.unwrap().current as usize, bouncer_store::migrate::POSTGRES.len());
}

#[tokio::test]
async fn failed_sqlite_migration_leaves_the_schema_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let err = store.migrate_with(&BROKEN_SQLITE).await.unwrap_err();
    assert!(matches!(err, StoreError::MigrationFailed { version: 2, .. }), "got {err:?}");
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let canary: i64 =
        conn.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'canary'", [], |r| r.get(0)).unwrap();
    assert_eq!(canary, 0, "the failed migration's table must not exist");
    let max: i64 = conn.query_row("SELECT max(version) FROM schema_migrations", [], |r| r.get(0)).unwrap();
    assert_eq!(max, 1);
}

#[tokio::test]
async fn a_fresh_database_reports_every_migration_pending() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("b.db")).await.unwrap();
    let all: Vec<u32> = bouncer_store::migrate::SQLITE.iter().map(|m| m.version).collect();
    assert_eq!(sqlite.pending_migrations().await.unwrap(), all);
    let db = TestDatabase::create().await;
    let pg = PgStore::connect(&db.url, 1).unwrap();
    let all: Vec<u32> = bouncer_store::migrate::POSTGRES.iter().map(|m| m.version).collect();
    assert_eq!(pg.pending_migrations().await.unwrap(), all);
}

#[tokio::test]
async fn edited_migration_is_refused() {
    static EDITED: [Migration; 1] =
        [Migration { version: 1, name: "identity", sql: "CREATE TABLE something_else (x int);" }];
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("b.db")).await.unwrap();
    store.migrate().await.unwrap();
    let err = store.migrate_with(&EDITED).await.unwrap_err();
    assert!(matches!(err, StoreError::MigrationEdited { version: 1, .. }), "got {err:?}");
}

#[cfg(unix)]
#[tokio::test]
async fn sqlite_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    SqliteStore::open(&path).await.unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
}

fn secret(seed: u8) -> TokenHash {
    ClientSecret::from_random([seed; 32]).hash()
}

async fn clients_are_created_rotated_with_overlap_and_deleted(store: Arc<dyn Store>) {
    let id = Uuid::now_v7();
    let new = NewClient {
        id,
        name: "billing-cron".into(),
        roles: vec!["user".into(), "service".into()],
        secret: secret(1),
        now: T0,
    };
    let client = store.create_client(new.clone(), &ctx()).await.unwrap();
    assert_eq!(
        (client.id, client.name.as_str(), client.roles.clone()),
        (id, "billing-cron", vec!["service".to_owned(), "user".to_owned()])
    );
    assert_eq!(store.clients().await.unwrap(), std::slice::from_ref(&client));
    assert_eq!(store.client(id).await.unwrap(), Some(client.clone()));
    let bad = NewClient { id: Uuid::now_v7(), roles: vec!["wizard".into()], secret: secret(9), ..new };
    assert!(
        matches!(store.create_client(bad, &ctx()).await, Err(StoreError::UnknownRole(r)) if r == "wizard")
    );
    assert_eq!(store.clients().await.unwrap().len(), 1, "an unknown role creates nothing");

    // Rotation: the old secret keeps working until the overlap ends.
    let later = T0 + Duration::from_secs(60);
    let overlap_until = later + Duration::from_secs(3600);
    store.rotate_client_secret(id, secret(2), overlap_until, later, &ctx()).await.unwrap();
    let valid = |at| {
        let store = store.clone();
        async move { store.client_credential(id, at).await.unwrap().unwrap().secrets }
    };
    let during = valid(later + Duration::from_secs(10)).await;
    assert!(during.contains(&secret(1)) && during.contains(&secret(2)), "both during the overlap");
    assert_eq!(valid(overlap_until).await, [secret(2)], "the old one ends with the overlap");
    // A second rotation does not extend the first secret's end.
    store
        .rotate_client_secret(id, secret(3), overlap_until + Duration::from_secs(7200), later, &ctx())
        .await
        .unwrap();
    let after = valid(overlap_until + Duration::from_secs(1)).await;
    assert!(
        after.contains(&secret(2)) && after.contains(&secret(3)) && !after.contains(&secret(1)),
        "{after:?}"
    );
    assert!(matches!(
        store.rotate_client_secret(Uuid::now_v7(), secret(4), later, later, &ctx()).await,
        Err(StoreError::NotFound)
    ));

    // Deleting revokes its tokens like a user's and leaves the audit trail.
    let revoked = store.delete_client(id, later, &ctx()).await.unwrap();
    assert_eq!(revoked, [Revocation::of_client(id, later, RevokeReason::ClientDeleted)]);
    assert_eq!(store.client_credential(id, later).await.unwrap(), None);
    assert!(matches!(store.delete_client(id, later, &ctx()).await, Err(StoreError::NotFound)));
    assert!(store.revocations_since(T0).await.unwrap().contains(&revoked[0]));
    let actions: Vec<_> =
        store.audit_records(0, 100).await.unwrap().iter().map(|r| r.event.action.as_str()).collect();
    assert_eq!(
        actions,
        ["client.created", "client.secret.rotated", "client.secret.rotated", "client.deleted"]
    );
    let (count, _) = bouncer_store::verify_audit_chain(&*store).await.unwrap().expect("intact");
    assert_eq!(count, 4);
}

async fn deleting_a_role_counts_and_revokes_its_clients(store: Arc<dyn Store>) {
    store.create_role(&role("reports"), T0, &ctx()).await.unwrap();
    let id = Uuid::now_v7();
    let new = NewClient { id, name: "r".into(), roles: vec!["reports".into()], secret: secret(1), now: T0 };
    store.create_client(new, &ctx()).await.unwrap();
    assert!(matches!(store.delete_role("reports", false, T0, &ctx()).await, Err(StoreError::RoleInUse(1))));
    let revoked = store.delete_role("reports", true, T0, &ctx()).await.unwrap();
    assert!(revoked.contains(&Revocation::user(id, T0, RevokeReason::RoleDeleted)), "{revoked:?}");
    assert_eq!(store.client(id).await.unwrap().unwrap().roles, Vec::<String>::new());
}

async fn api_keys_belong_to_their_owner_and_grant_what_both_hold(store: Arc<dyn Store>) {
    let owner = new_user(&store, "kai@example.com").await;
    let other = new_user(&store, "lee@example.com").await;
    store.create_role(&role("reports"), T0, &ctx()).await.unwrap();
    store.set_roles(owner.id, &["user".into(), "reports".into()], T0, &ctx()).await.unwrap();
    let issued = ApiKey::from_random([1, 2, 3, 4], [5; 32]);
    let new = NewApiKey {
        id: Uuid::now_v7(),
        user_id: owner.id,
        name: "ci".into(),
        prefix: issued.prefix().into(),
        hash: issued.hash(),
        roles: vec!["reports".into(), "user".into()],
        now: T0,
        expires_at: Some(T0 + Duration::from_secs(3600)),
    };
    let key = store.create_api_key(new.clone(), &ctx()).await.unwrap();
    assert_eq!(
        (key.prefix.as_str(), key.roles.clone()),
        ("01020304", vec!["reports".to_owned(), "user".to_owned()])
    );
    assert_eq!(store.api_keys(Some(owner.id)).await.unwrap(), std::slice::from_ref(&key));
    assert_eq!(store.api_keys(Some(other.id)).await.unwrap(), []);
    assert_eq!(store.api_keys(None).await.unwrap(), std::slice::from_ref(&key));
    let dup = NewApiKey { id: Uuid::now_v7(), ..new.clone() };
    assert!(store.create_api_key(dup, &ctx()).await.is_err(), "a prefix is unique");
    let ghost =
        NewApiKey { id: Uuid::now_v7(), user_id: Uuid::now_v7(), prefix: "ffffffff".into(), ..new.clone() };
    assert!(matches!(store.create_api_key(ghost, &ctx()).await, Err(StoreError::NotFound)));

    // What a gateway may accept: core's rule over what the store holds.
    let usable = |at| {
        let store = store.clone();
        async move { bouncer_store::usable_api_keys(&*store, None, at).await.unwrap() }
    };
    let now = usable(T0).await;
    assert_eq!(now.len(), 1);
    assert_eq!(
        (now[0].hash, now[0].roles.clone(), now[0].user_id),
        (issued.hash(), key.roles.clone(), owner.id)
    );
    assert_eq!(usable(T0 + Duration::from_secs(3600)).await, [], "expired");
    store.set_roles(owner.id, &["user".into()], T0, &ctx()).await.unwrap();
    assert_eq!(usable(T0).await[0].roles, ["user"], "the owner lost reports, so did the key");
    store.ban_user(owner.id, "x", T0, &ctx()).await.unwrap();
    assert_eq!(usable(T0).await, [], "a banned owner's keys are not usable");
    store.unban_user(owner.id, T0, &ctx()).await.unwrap();
    assert_eq!(usable(T0).await.len(), 1, "and are again after the unban");

    // Only its owner (or an admin, owner None) deletes it.
    assert!(matches!(
        store.revoke_api_key(key.id, Some(other.id), T0, &ctx()).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.revoke_api_key(key.id, Some(owner.id), T0, &ctx()).await.unwrap(), key);
    assert!(matches!(store.revoke_api_key(key.id, None, T0, &ctx()).await, Err(StoreError::NotFound)));
    assert_eq!(usable(T0).await, []);
    let trail: Vec<_> = store
        .audit_records(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.event.action.as_str().starts_with("api_key"))
        .map(|r| (r.event.action.as_str(), r.event.subject.clone()))
        .collect();
    let subject = Some(owner.id.to_string());
    assert_eq!(trail, [("api_key.created", subject.clone()), ("api_key.revoked", subject)]);
}
