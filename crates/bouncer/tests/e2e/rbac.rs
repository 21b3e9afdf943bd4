//! `/admin/*` end to end: RBAC administration, bans, deletion and the audit
//! query, on both backends, through the real binary.

use serde_json::{Value, json};

use crate::harness::{Admin, Backend, PASSWORD, expect_json, expect_problem};

on_both_backends!(
    admin_routes_need_a_token_and_the_admin_role,
    roles_lifecycle_and_their_effect_on_tokens,
    ban_unban_and_delete_flows,
    users_are_listed_in_pages,
    audit_is_queried_newest_first_and_records_every_admin_action,
);

async fn admin_token(admin: &Admin) -> (String, String) {
    admin.root().await
}

async fn send(
    admin: &Admin,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = admin.http.request(method.parse().unwrap(), admin.url(path));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request.json(&b);
    }
    request.send().await.unwrap()
}

fn claims(token: &str) -> Value {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

async fn admin_routes_need_a_token_and_the_admin_role(backend: Backend) {
    let admin = Admin::start(backend).await;
    let user = admin.signup("plain@example.com").await;
    let id = user["id"].as_str().unwrap();
    let (user_token, _) = admin.login("plain@example.com", PASSWORD).await;
    let routes: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/admin/users".into(), None),
        ("GET", format!("/admin/users/{id}"), None),
        ("PUT", format!("/admin/users/{id}/roles"), Some(json!({"roles": ["admin"]}))),
        ("POST", format!("/admin/users/{id}/ban"), Some(json!({"reason": "x"}))),
        ("POST", format!("/admin/users/{id}/unban"), None),
        ("DELETE", format!("/admin/users/{id}"), None),
        ("GET", "/admin/roles".into(), None),
        ("POST", "/admin/roles".into(), Some(json!({"name": "x"}))),
        ("DELETE", "/admin/roles/x".into(), None),
        ("GET", "/admin/audit".into(), None),
    ];
    for (method, path, body) in routes {
        let anonymous = send(&admin, method, &path, None, body.clone()).await;
        expect_problem(anonymous, 401, "unauthenticated").await;
        let forbidden = send(&admin, method, &path, Some(&user_token), body).await;
        let challenge = forbidden.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.contains("insufficient_scope"), "{method} {path}: {challenge}");
        expect_problem(forbidden, 403, "forbidden").await;
    }
    // Nothing above changed the user.
    let (_, root) = admin_token(&admin).await;
    let still = expect_json(admin.get_bearer(&format!("/admin/users/{id}"), &root).await, 200).await;
    assert_eq!((still["roles"].clone(), still["banned"].clone()), (json!(["user"]), json!(false)));
}

async fn roles_lifecycle_and_their_effect_on_tokens(backend: Backend) {
    let admin = Admin::start(backend).await;
    let (_, root) = admin_token(&admin).await;
    let roles = expect_json(admin.get_bearer("/admin/roles", &root).await, 200).await;
    let names: Vec<&str> =
        roles["items"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["admin", "service", "user"]);

    let new_role = json!({"name": "billing-reader", "description": "Reads invoices"});
    let created =
        expect_json(send(&admin, "POST", "/admin/roles", Some(&root), Some(new_role.clone())).await, 201)
            .await;
    assert_eq!(created, json!({"name": "billing-reader", "description": "Reads invoices", "builtin": false}));
    expect_problem(
        send(&admin, "POST", "/admin/roles", Some(&root), Some(new_role)).await,
        409,
        "role-exists",
    )
    .await;
    let bad = send(&admin, "POST", "/admin/roles", Some(&root), Some(json!({"name": "Bad Name"}))).await;
    assert_eq!(expect_problem(bad, 422, "validation-failed").await["errors"][0]["field"], "name");

    let user = admin.signup("rhea@example.com").await;
    let id = user["id"].as_str().unwrap().to_owned();
    let (access, refresh) = admin.login("rhea@example.com", PASSWORD).await;
    let add = json!({"roles": ["user", "billing-reader"]});
    let changed = expect_json(
        send(&admin, "PUT", &format!("/admin/users/{id}/roles"), Some(&root), Some(add)).await,
        200,
    )
    .await;
    assert_eq!(changed["roles"], json!(["billing-reader", "user"]));
    // Adding a role leaves sessions alone; a refresh carries it.
    expect_json(admin.get_bearer("/users/me", &access).await, 200).await;
    let rotated =
        expect_json(admin.post("/auth/refresh", json!({"refresh_token": refresh})).await, 200).await;
    let access = rotated["access_token"].as_str().unwrap().to_owned();
    let refresh = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(claims(&access)["roles"], json!(["billing-reader", "user"]), "role visible after refresh");

    let unknown = send(
        &admin,
        "PUT",
        &format!("/admin/users/{id}/roles"),
        Some(&root),
        Some(json!({"roles": ["wizard"]})),
    )
    .await;
    expect_problem(unknown, 422, "validation-failed").await;
    expect_problem(
        send(&admin, "DELETE", "/admin/roles/billing-reader", Some(&root), None).await,
        409,
        "role-in-use",
    )
    .await;
    expect_problem(send(&admin, "DELETE", "/admin/roles/user", Some(&root), None).await, 409, "builtin-role")
        .await;
    expect_problem(send(&admin, "DELETE", "/admin/roles/nosuch", Some(&root), None).await, 404, "not-found")
        .await;
    expect_json(
        send(&admin, "DELETE", "/admin/roles/billing-reader?force=true", Some(&root), None).await,
        204,
    )
    .await;
    // Forcing took the role away, which kills the holder's sessions at once.
    expect_problem(admin.get_bearer("/users/me", &access).await, 401, "invalid-token").await;
    expect_problem(
        admin.post("/auth/refresh", json!({"refresh_token": refresh})).await,
        401,
        "invalid-token",
    )
    .await;
    let (fresh, _) = admin.login("rhea@example.com", PASSWORD).await;
    assert_eq!(claims(&fresh)["roles"], json!(["user"]));

    // Removing a role directly kills existing sessions too.
    let promote = json!({"roles": ["admin", "user"]});
    expect_json(
        send(&admin, "PUT", &format!("/admin/users/{id}/roles"), Some(&root), Some(promote)).await,
        200,
    )
    .await;
    let (as_admin, _) = admin.login("rhea@example.com", PASSWORD).await;
    expect_json(admin.get_bearer("/admin/users", &as_admin).await, 200).await;
    let demote = json!({"roles": ["user"]});
    expect_json(
        send(&admin, "PUT", &format!("/admin/users/{id}/roles"), Some(&root), Some(demote)).await,
        200,
    )
    .await;
    expect_problem(admin.get_bearer("/admin/users", &as_admin).await, 401, "invalid-token").await;
}

async fn ban_unban_and_delete_flows(backend: Backend) {
    let admin = Admin::start(backend).await;
    let (root_id, root) = admin_token(&admin).await;
    let user = admin.signup("sid@example.com").await;
    let id = user["id"].as_str().unwrap().to_owned();
    let (access, refresh) = admin.login("sid@example.com", PASSWORD).await;

    let ban = json!({"reason": "chargeback fraud"});
    let banned = expect_json(
        send(&admin, "POST", &format!("/admin/users/{id}/ban"), Some(&root), Some(ban.clone())).await,
        200,
    )
    .await;
    assert_eq!(
        (banned["banned"].clone(), banned["ban_reason"].clone()),
        (json!(true), json!("chargeback fraud"))
    );
    expect_problem(admin.get_bearer("/users/me", &access).await, 401, "invalid-token").await;
    expect_problem(
        admin.post("/auth/refresh", json!({"refresh_token": refresh})).await,
        401,
        "invalid-token",
    )
    .await;
    let right = admin.post("/auth/login", json!({"email": "sid@example.com", "password": PASSWORD})).await;
    expect_problem(right, 403, "account-banned").await;
    let wrong =
        admin.post("/auth/login", json!({"email": "sid@example.com", "password": "wrong password!"})).await;
    expect_problem(wrong, 401, "invalid-credentials").await;
    expect_problem(
        send(&admin, "POST", &format!("/admin/users/{id}/ban"), Some(&root), Some(ban)).await,
        409,
        "already-banned",
    )
    .await;
    let empty =
        send(&admin, "POST", &format!("/admin/users/{id}/ban"), Some(&root), Some(json!({"reason": "  "})))
            .await;
    expect_problem(empty, 422, "validation-failed").await;

    let unbanned =
        expect_json(send(&admin, "POST", &format!("/admin/users/{id}/unban"), Some(&root), None).await, 200)
            .await;
    assert_eq!(unbanned["banned"], json!(false));
    admin.login("sid@example.com", PASSWORD).await;

    // Administrators cannot lock themselves out.
    let own = format!("/admin/users/{root_id}");
    expect_problem(
        send(&admin, "POST", &format!("{own}/ban"), Some(&root), Some(json!({"reason": "x"}))).await,
        409,
        "conflict",
    )
    .await;
    expect_problem(send(&admin, "DELETE", &own, Some(&root), None).await, 409, "conflict").await;
    expect_problem(
        send(&admin, "PUT", &format!("{own}/roles"), Some(&root), Some(json!({"roles": ["user"]}))).await,
        409,
        "conflict",
    )
    .await;

    expect_json(send(&admin, "DELETE", &format!("/admin/users/{id}"), Some(&root), None).await, 204).await;
    expect_problem(admin.get_bearer(&format!("/admin/users/{id}"), &root).await, 404, "not-found").await;
    expect_problem(
        send(&admin, "DELETE", &format!("/admin/users/{id}"), Some(&root), None).await,
        404,
        "not-found",
    )
    .await;
    let gone = admin.post("/auth/login", json!({"email": "sid@example.com", "password": PASSWORD})).await;
    expect_problem(gone, 401, "invalid-credentials").await;
    // The account is gone; its history is not.
    let history =
        expect_json(admin.get_bearer(&format!("/admin/audit?subject={id}&limit=200"), &root).await, 200)
            .await;
    let actions: Vec<&str> =
        history["items"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    for expected in ["user.deleted", "user.unbanned", "user.banned", "user.signup"] {
        assert!(actions.contains(&expected), "{expected} missing from {actions:?}");
    }
    expect_problem(admin.get_bearer("/admin/users/not-a-uuid", &root).await, 404, "not-found").await;
}

async fn users_are_listed_in_pages(backend: Backend) {
    let admin = Admin::start(backend).await;
    let (_, root) = admin_token(&admin).await;
    for i in 0..5 {
        admin.signup(&format!("page{i}@example.com")).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/admin/users?limit=2&cursor={c}"),
            None => "/admin/users?limit=2".into(),
        };
        let page = expect_json(admin.get_bearer(&path, &root).await, 200).await;
        seen.extend(
            page["items"].as_array().unwrap().iter().map(|u| u["email"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            "root@example.com",
            "page0@example.com",
            "page1@example.com",
            "page2@example.com",
            "page3@example.com",
            "page4@example.com"
        ]
    );
    let filtered = expect_json(admin.get_bearer("/admin/users?email=PAGE3", &root).await, 200).await;
    assert_eq!(filtered["items"].as_array().unwrap().len(), 1);
    assert_eq!(filtered["next_cursor"], Value::Null);
    expect_problem(admin.get_bearer("/admin/users?limit=0", &root).await, 422, "validation-failed").await;
    expect_problem(admin.get_bearer("/admin/users?limit=9999", &root).await, 422, "validation-failed").await;
    expect_problem(admin.get_bearer("/admin/users?cursor=nope", &root).await, 422, "validation-failed").await;
}

async fn audit_is_queried_newest_first_and_records_every_admin_action(backend: Backend) {
    let admin = Admin::start(backend).await;
    let (root_id, root) = admin_token(&admin).await;
    let user = admin.signup("tom@example.com").await;
    let id = user["id"].as_str().unwrap().to_owned();
    send(&admin, "POST", "/admin/roles", Some(&root), Some(json!({"name": "ops"}))).await;
    send(
        &admin,
        "PUT",
        &format!("/admin/users/{id}/roles"),
        Some(&root),
        Some(json!({"roles": ["ops", "user"]})),
    )
    .await;
    send(&admin, "POST", &format!("/admin/users/{id}/ban"), Some(&root), Some(json!({"reason": "test"})))
        .await;
    send(&admin, "POST", &format!("/admin/users/{id}/unban"), Some(&root), None).await;
    send(&admin, "DELETE", "/admin/roles/ops?force=true", Some(&root), None).await;
    send(&admin, "DELETE", &format!("/admin/users/{id}"), Some(&root), None).await;

    let by_admin =
        expect_json(admin.get_bearer(&format!("/admin/audit?actor={root_id}"), &root).await, 200).await;
    let rows: Vec<(String, String)> = by_admin["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] != "auth.login.succeeded")
        .map(|r| (r["action"].as_str().unwrap().to_owned(), r["subject"].as_str().unwrap().to_owned()))
        .collect();
    let expected: Vec<(String, String)> = [
        ("user.deleted", id.as_str()),
        ("role.deleted", "ops"),
        ("user.unbanned", id.as_str()),
        ("user.banned", id.as_str()),
        ("user.roles.changed", id.as_str()),
        ("role.created", "ops"),
    ]
    .iter()
    .map(|(a, s)| (a.to_string(), s.to_string()))
    .collect();
    assert_eq!(rows, expected, "admin actions, newest first, with the admin as actor");
    let item = &by_admin["items"][0];
    for field in [
        "seq",
        "id",
        "at",
        "actor",
        "action",
        "subject",
        "ip",
        "request_id",
        "outcome",
        "details",
        "prev_hash",
        "hash",
    ] {
        assert!(item.get(field).is_some(), "audit item lacks {field}: {item}");
    }
    assert_eq!(item["details"]["email"], "tom@example.com");

    let banned = expect_json(admin.get_bearer("/admin/audit?action=user.banned", &root).await, 200).await;
    assert_eq!(banned["items"][0]["details"], json!({"reason": "test"}));
    let one = expect_json(admin.get_bearer("/admin/audit?limit=1", &root).await, 200).await;
    let cursor = one["next_cursor"].as_str().unwrap().to_owned();
    let next =
        expect_json(admin.get_bearer(&format!("/admin/audit?limit=1&cursor={cursor}"), &root).await, 200)
            .await;
    assert!(next["items"][0]["seq"].as_i64().unwrap() < one["items"][0]["seq"].as_i64().unwrap());
    let future =
        expect_json(admin.get_bearer("/admin/audit?since=2999-01-01T00:00:00Z", &root).await, 200).await;
    assert_eq!(future["items"], json!([]));
    expect_problem(admin.get_bearer("/admin/audit?since=yesterday", &root).await, 422, "validation-failed")
        .await;
    let verify = admin.cli(&["audit", "verify"], None).await;
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
}
