-- 0004: machine credentials. The same schema as
-- migrations/postgres/0004_machine_clients.sql (read the comments there).

CREATE TABLE clients (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE client_roles (
    client_id TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    role      TEXT NOT NULL REFERENCES roles (name) ON DELETE CASCADE,
    PRIMARY KEY (client_id, role)
);
CREATE INDEX client_roles_role ON client_roles (role);

CREATE TABLE client_secrets (
    hash       BLOB PRIMARY KEY,
    client_id  TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE INDEX client_secrets_client_id ON client_secrets (client_id);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    prefix     TEXT NOT NULL UNIQUE,
    hash       BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE INDEX api_keys_user_id ON api_keys (user_id);

CREATE TABLE api_key_roles (
    key_id TEXT NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    role   TEXT NOT NULL REFERENCES roles (name) ON DELETE CASCADE,
    PRIMARY KEY (key_id, role)
);
