-- 0003: revocation records — what token verifiers (gateways) must refuse.
-- Written in the same transaction as the change that causes them (logout,
-- password change, ban, delete, role removal, refresh-token reuse) and
-- published after commit; a gateway loads the recent ones at start.
-- No foreign key: a deleted user's revocation must outlive the user.

CREATE TABLE revocations (
    -- 'user': every token of user_id issued before `at` is dead.
    -- 'session': every token of session `id` is dead.
    kind    TEXT NOT NULL,
    id      TEXT NOT NULL,
    user_id TEXT NOT NULL,
    at      INTEGER NOT NULL,
    reason  TEXT NOT NULL
);
-- Snapshots read only revocations young enough to affect a live token.
CREATE INDEX revocations_at ON revocations (at);
