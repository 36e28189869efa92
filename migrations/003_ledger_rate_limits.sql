-- The quota ledger (ledger.py's lines, one row each) and the rate-limit events (rate_limit.py's
-- windows), so every node counts the same spending and the same attempts.
CREATE TABLE ledger (
    id       bigserial PRIMARY KEY,
    user_id  text NOT NULL,
    kind     text NOT NULL,
    count    integer NOT NULL,          -- negative for a refund
    task_id  text,
    at       timestamptz NOT NULL,
    day      date NOT NULL              -- the UTC day of `at`: quotas are per UTC day
);
CREATE INDEX ledger_day_user_kind ON ledger (day, user_id, kind);
CREATE INDEX ledger_task ON ledger (task_id);

CREATE TABLE rate_events (
    name  text NOT NULL,                -- a keyed hash of the limit's key, never the key itself
    at    double precision NOT NULL     -- seconds since the epoch, from the limiter's clock
);
CREATE INDEX rate_events_name_at ON rate_events (name, at);
