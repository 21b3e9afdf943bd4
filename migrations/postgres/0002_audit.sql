-- 0002: the append-only, hash-chained audit log.
-- Each row stores prev_hash and hash = SHA-256(prev_hash || canonical record)
-- (see bouncer_core::audit); `bouncer audit verify` walks the chain.

CREATE TABLE audit_events (
    -- Position in the chain: 1, 2, 3, … without gaps, assigned while
    -- holding the audit_head row lock, so concurrent writers still form
    -- one linear chain.
    seq        bigint PRIMARY KEY,
    id         uuid NOT NULL UNIQUE,
    at         timestamptz NOT NULL,
    -- A user id, 'cli', 'gateway', or NULL for an anonymous caller.
    actor      text,
    action     text NOT NULL,
    subject    text,
    ip         text,
    user_agent text,
    request_id text,
    outcome    text NOT NULL,
    -- Canonical JSON text exactly as hashed; jsonb would re-encode it.
    details    text NOT NULL,
    prev_hash  bytea NOT NULL,
    hash       bytea NOT NULL
);
-- The chain's head, one row: every append locks it (UPDATE … RETURNING),
-- which both serialises appenders into one linear chain and hands each the
-- head its predecessor wrote, in one round trip. A cache of the last
-- record's seq and hash; `bouncer audit verify` checks the two agree.
CREATE TABLE audit_head (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    seq      bigint NOT NULL,
    hash     bytea NOT NULL
);
INSERT INTO audit_head (seq, hash) VALUES (0, decode(repeat('00', 32), 'hex'));

CREATE INDEX audit_events_actor ON audit_events (actor, seq);
CREATE INDEX audit_events_subject ON audit_events (subject, seq);
CREATE INDEX audit_events_action ON audit_events (action, seq);
CREATE INDEX audit_events_at ON audit_events (at);

-- Append-only: rows can be inserted, never changed or removed. A superuser
-- can still disable the trigger; the hash chain is what detects that.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP;
END
$$;
CREATE TRIGGER audit_events_no_update_delete BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

-- A login attempt inserts its failure rows *before* the password is checked
-- (in the same locked transaction that counts the window), so parallel
-- guesses cannot all pass a count that none of them has raised yet. A
-- successful attempt deletes its rows again by this id.
ALTER TABLE login_failures ADD COLUMN attempt uuid;
CREATE INDEX login_failures_attempt ON login_failures (attempt);
