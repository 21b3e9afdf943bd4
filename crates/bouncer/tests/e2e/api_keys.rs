//! API keys end to end, admin side, on both backends: made by their owner
//! (shown once, roles within the owner's), listed without the key, deleted
//! by the owner or an admin, audited without the key.

use serde_json::{Value, json};

use crate::harness::{Admin, Backend, PASSWORD, expect_json, expect_problem};

on_both_backends!(keys_are_made_listed_and_deleted_by_their_owner_and_admins);

async fn delete(admin: &Admin, path: &str, token: &str) -> reqwest::Response {
    admin.http.delete(admin.url(path)).bearer_auth(token).send().await.unwrap()
}

fn ids(list: &Value) -> Vec<&str> {
    list["items"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap()).collect()
}

async fn keys_are_made_listed_and_deleted_by_their_owner_and_admins(backend: Backend) {
    let admin = Admin::start(backend).await;
    let (_, root) = admin.root().await;
    let alice = admin.signup("alice@example.com").await;
    let alice_id = alice["id"].as_str().unwrap();
    let (token, _) = admin.login("alice@example.com", PASSWORD).await;

    // Default: all the owner's roles, no expiry; the key shown once, in our format.
    let made =
        expect_json(admin.post_bearer("/users/me/api-keys", &token, json!({"name": "laptop"})).await, 201)
            .await;
    let key = made["key"].as_str().unwrap().to_owned();
    let prefix = made["prefix"].as_str().unwrap();
    assert!(key.starts_with(&format!("bk_{prefix}_")) && key.len() == 55, "{made}");
    assert_eq!((&made["roles"], &made["expires_at"]), (&json!(["user"]), &Value::Null), "{made}");
    let first = made["id"].as_str().unwrap().to_owned();

    // Roles within the owner's only; expiry in bounds.
    for (body, field) in [
        (json!({"name": "x", "roles": ["admin"]}), "roles"),
        (json!({"name": "x", "expires_in": 0}), "expires_in"),
        (json!({"name": "", "roles": []}), "name"),
    ] {
        let refused = expect_problem(
            admin.post_bearer("/users/me/api-keys", &token, body).await,
            422,
            "validation-failed",
        )
        .await;
        assert_eq!(refused["errors"][0]["field"], field, "{refused}");
    }
    let expiring = json!({"name": "ci", "roles": [], "expires_in": 3600});
    let second = expect_json(admin.post_bearer("/users/me/api-keys", &token, expiring).await, 201).await;
    assert!(second["expires_at"].is_string() && second["roles"] == json!([]), "{second}");
    let second = second["id"].as_str().unwrap().to_owned();

    // Listed oldest first, never with the key.
    let own = expect_json(admin.get_bearer("/users/me/api-keys", &token).await, 200).await;
    assert_eq!(ids(&own), [first.as_str(), second.as_str()]);
    assert!(!own.to_string().contains(&key[12..]), "a list never shows the key");
    let root_keys = expect_json(admin.get_bearer("/users/me/api-keys", &root).await, 200).await;
    assert_eq!(ids(&root_keys), Vec::<&str>::new(), "each user sees their own keys");

    // The owner deletes one; someone else's is not found (for them).
    expect_problem(delete(&admin, &format!("/users/me/api-keys/{first}"), &root).await, 404, "not-found")
        .await;
    assert_eq!(delete(&admin, &format!("/users/me/api-keys/{first}"), &token).await.status(), 204);
    expect_problem(delete(&admin, &format!("/users/me/api-keys/{first}"), &token).await, 404, "not-found")
        .await;

    // Admins list everyone's (or one user's) and delete any; users may not.
    expect_problem(admin.get_bearer("/admin/api-keys", &token).await, 403, "forbidden").await;
    let all = expect_json(admin.get_bearer("/admin/api-keys", &root).await, 200).await;
    assert_eq!(ids(&all), [second.as_str()]);
    assert_eq!(all["items"][0]["user_id"], json!(alice_id));
    let hers =
        expect_json(admin.get_bearer(&format!("/admin/api-keys?user={alice_id}"), &root).await, 200).await;
    assert_eq!(ids(&hers), [second.as_str()]);
    expect_problem(admin.get_bearer("/admin/api-keys?user=nope", &root).await, 422, "validation-failed")
        .await;
    assert_eq!(delete(&admin, &format!("/admin/api-keys/{second}"), &root).await.status(), 204);
    let none = expect_json(admin.get_bearer("/admin/api-keys", &root).await, 200).await;
    assert_eq!(ids(&none), Vec::<&str>::new());

    // Audited under the owner, without the key.
    let audit = expect_json(
        admin.get_bearer(&format!("/admin/audit?subject={alice_id}&limit=100"), &root).await,
        200,
    )
    .await;
    let actions: Vec<&str> =
        audit["items"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions.iter().filter(|a| **a == "api_key.created").count(), 2, "{actions:?}");
    assert_eq!(actions.iter().filter(|a| **a == "api_key.revoked").count(), 2, "{actions:?}");
    assert!(!audit.to_string().contains(&key[12..]), "no key in the audit log");
    assert!(!admin.logs().contains(&key[12..]), "no key in the logs");
}
