-- Accounts (accounts.py's users, API keys, sessions and login links) and the Idempotency-Key
-- records (idempotency.py), so every node signs in, checks keys and replays creates alike.
-- Each account row keeps its whole JSON record (the JSON store's exact fields: a copy both ways
-- gives identical data) beside the columns looked up by. Secrets are stored only as SHA-256
-- digests and password hashes, as in accounts.json; the webhook signing secret is kept readable
-- in the user's record, because the studio signs with it.
CREATE TABLE account_users (
    id        text PRIMARY KEY,
    username  text NOT NULL UNIQUE,         -- lower-cased; the UNIQUE makes two creates of one name one user
    record    jsonb NOT NULL
);

CREATE TABLE account_api_keys (
    seq      bigserial,                     -- creation order: the account page lists keys in it
    hash     text PRIMARY KEY,              -- SHA-256 of the key
    id       text NOT NULL UNIQUE,
    user_id  text NOT NULL,
    record   jsonb NOT NULL
);
CREATE INDEX account_api_keys_user ON account_api_keys (user_id, seq);

CREATE TABLE account_sessions (
    hash        text PRIMARY KEY,           -- SHA-256 of the session id
    user_id     text NOT NULL,
    expires_at  double precision NOT NULL,  -- seconds since the epoch, from the accounts' clock
    record      jsonb NOT NULL
);
CREATE INDEX account_sessions_user ON account_sessions (user_id);

CREATE TABLE account_login_links (
    seq         bigserial,
    hash        text PRIMARY KEY,           -- SHA-256 of the link's token
    user_id     text NOT NULL,
    expires_at  double precision NOT NULL
);

-- One row per (user, key) pair, named by the same SHA-256 the JSON files are named by. The row is
-- claimed by INSERT ... ON CONFLICT DO NOTHING before the create runs (status NULL), then holds
-- the answer; a refused create deletes its row.
CREATE TABLE idempotency_keys (
    name          text PRIMARY KEY,
    user_id       text,
    request_hash  text NOT NULL,
    status        integer,
    body          jsonb,
    created_at    text NOT NULL             -- ISO 8601 UTC (clock.iso): sorts as text
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
