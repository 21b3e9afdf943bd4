//! Role names and the built-in roles.

/// Roles every installation has; migrations create them and they cannot be deleted.
pub const BUILTIN_ROLES: [&str; 3] = ["admin", "user", "service"];

/// The role a self-service signup receives.
pub const SIGNUP_ROLE: &str = "user";

/// Whether `name` is a valid role name: `[a-z][a-z0-9_-]{0,31}`.
///
/// Kept to a header-safe alphabet because roles travel to upstreams as a
/// comma-separated `X-User-Roles` header.
pub fn is_valid_role_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 32
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
}

/// Whether changing a user's roles from `before` to `after` must revoke
/// their sessions at once: removing any role does (tokens carry the roles,
/// so an old token would keep the removed one until it expires); only
/// adding roles does not — the next refresh shows them.
pub fn change_revokes(before: &[String], after: &[String]) -> bool {
    before.iter().any(|r| !after.contains(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_role_revokes_adding_one_does_not() {
        let v = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(change_revokes(&v(&["admin", "user"]), &v(&["user"])));
        assert!(change_revokes(&v(&["admin"]), &v(&["user"])));
        assert!(!change_revokes(&v(&["user"]), &v(&["user", "admin"])));
        assert!(!change_revokes(&v(&[]), &v(&[])));
    }

    #[test]
    fn role_names() {
        for ok in ["admin", "a", "billing-reader", "ops_2", &"a".repeat(32)] {
            assert!(is_valid_role_name(ok), "{ok} should be valid");
        }
        for bad in ["", "Admin", "1ops", "-x", "a,b", "a b", &"a".repeat(33)] {
            assert!(!is_valid_role_name(bad), "{bad} should be invalid");
        }
    }
}
