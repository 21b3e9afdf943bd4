-- 0001: accounts, roles, sessions, refresh tokens and the login throttle.
-- Released migrations are never edited: the runner records a checksum and
-- refuses to start when an applied file changed. Add 0002_… instead.

CREATE TABLE users (
    id             uuid PRIMARY KEY,
    -- As the user typed it (trimmed); shown back in responses and tokens.
    email          text NOT NULL,
    -- Lower-cased email: uniqueness and lookups are case-insensitive.
    email_key      text NOT NULL,
    -- Argon2id PHC string; parameters live inside it so old hashes keep verifying.
    password_hash  text NOT NULL,
    created_at     timestamptz NOT NULL,
    -- Access tokens with iat before this (whole seconds) are dead: logout-all,
    -- ban and role removal set it so tokens die without listing every session.
    revoked_before timestamptz,
    banned_at      timestamptz,
    ban_reason     text,
    CONSTRAINT users_email_key_unique UNIQUE (email_key)
);

CREATE TABLE roles (
    name        text PRIMARY KEY,
    description text NOT NULL DEFAULT '',
    -- Built-in roles cannot be deleted.
    builtin     boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO roles (name, description, builtin) VALUES
    ('admin',   'Administers users, roles and audit',        true),
    ('user',    'A signed-up end user',                      true),
    ('service', 'A machine client calling APIs on its own behalf', true);

CREATE TABLE user_roles (
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role    text NOT NULL REFERENCES roles (name) ON DELETE CASCADE,
    PRIMARY KEY (user_id, role)
);

-- A session is one login: the family of refresh tokens that rotate from it.
-- Its sid is in every access token minted for it, so logging it out kills them.
CREATE TABLE sessions (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL,
    -- Absolute end of the session (refresh_token_ttl after login); rotation never extends it.
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    -- logout, logout_all, password_changed, reuse_detected, …
    revoke_reason text
);
CREATE INDEX sessions_user_id ON sessions (user_id);

-- Refresh tokens are stored only as SHA-256 of the secret.
CREATE TABLE refresh_tokens (
    hash       bytea PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    issued_at  timestamptz NOT NULL,
    -- Set when this token was exchanged; presenting it again is reuse.
    rotated_at timestamptz
);
CREATE INDEX refresh_tokens_session_id ON refresh_tokens (session_id);

-- One row per failed login per throttle key (account:… or ip:…), pruned as
-- rows leave the window. A table, not memory, so admin replicas share it.
CREATE TABLE login_failures (
    key text NOT NULL,
    at  timestamptz NOT NULL
);
CREATE INDEX login_failures_key_at ON login_failures (key, at);
CREATE INDEX login_failures_at ON login_failures (at);
