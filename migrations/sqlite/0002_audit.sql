-- 0002: the append-only, hash-chained audit log. Same schema as
-- migrations/postgres/0002_audit.sql (read the comments there); instants are
-- INTEGER microseconds, ids TEXT, hashes BLOB. Appends are serialised by
-- SQLite's single writer (BEGIN IMMEDIATE).

CREATE TABLE audit_events (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    at         INTEGER NOT NULL,
    actor      TEXT,
    action     TEXT NOT NULL,
    subject    TEXT,
    ip         TEXT,
    user_agent TEXT,
    request_id TEXT,
    outcome    TEXT NOT NULL,
    details    TEXT NOT NULL,
    prev_hash  BLOB NOT NULL,
    hash       BLOB NOT NULL
);
CREATE INDEX audit_events_actor ON audit_events (actor, seq);
CREATE INDEX audit_events_subject ON audit_events (subject, seq);
CREATE INDEX audit_events_action ON audit_events (action, seq);
CREATE INDEX audit_events_at ON audit_events (at);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused');
END;

-- A login attempt inserts its failure rows *before* the password is checked
-- (in the same locked transaction that counts the window), so parallel
-- guesses cannot all pass a count that none of them has raised yet. A
-- successful attempt deletes its rows again by this id.
ALTER TABLE login_failures ADD COLUMN attempt TEXT;
CREATE INDEX login_failures_attempt ON login_failures (attempt);
