-- 0004: machine credentials — OAuth2 service clients (client_credentials
-- grant) and users' API keys. Secrets and keys are 256 random bits, kept
-- only as SHA-256 (see crates/core/src/credential.rs for why not Argon2).

-- A client's id is the `sub` and `client_id` of the tokens it is issued,
-- so deleting it revokes them like a user (a 'user' revocation of its id).
CREATE TABLE clients (
    id         uuid PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE TABLE client_roles (
    client_id uuid NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    role      text NOT NULL REFERENCES roles (name) ON DELETE CASCADE,
    PRIMARY KEY (client_id, role)
);
CREATE INDEX client_roles_role ON client_roles (role);

CREATE TABLE client_secrets (
    hash       bytea PRIMARY KEY,
    client_id  uuid NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL,
    -- Set when a newer secret replaced this one: it keeps working until then
    -- (admin.client_secret_overlap), so a rotation needs no lock-step deploy.
    expires_at timestamptz
);
CREATE INDEX client_secrets_client_id ON client_secrets (client_id);

CREATE TABLE api_keys (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name       text NOT NULL,
    -- Public part of bk_<prefix>_<secret>: finds the key at the gateway.
    prefix     text NOT NULL UNIQUE,
    -- SHA-256 of the whole key.
    hash       bytea NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz
);
CREATE INDEX api_keys_user_id ON api_keys (user_id);

-- What the key may do, at most; at use it is also limited to the roles its
-- owner still holds.
CREATE TABLE api_key_roles (
    key_id uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    role   text NOT NULL REFERENCES roles (name) ON DELETE CASCADE,
    PRIMARY KEY (key_id, role)
);
