-- The task records: the whole record as JSONB, plus the columns the listings filter on.
-- The filter columns are written by the store from the record (task_store_pg._columns), so they
-- match the JSON store's index exactly (prompt lower-cased the way Python lower-cases it).
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE tasks (
    id          text PRIMARY KEY,           -- time-sortable: ORDER BY id is creation order
    record      jsonb NOT NULL,
    status      text NOT NULL DEFAULT '',
    kind        text NOT NULL DEFAULT '',
    provider    text NOT NULL DEFAULT '',
    owner       text,
    prompt      text NOT NULL DEFAULT '',   -- lower-cased params.prompt, for text search
    created_at  text                        -- the record's ISO 8601 UTC stamp (sorts as text)
);

-- Newest-first pages within one filter value walk these backwards.
CREATE INDEX tasks_status_id ON tasks (status, id);
CREATE INDEX tasks_kind_id ON tasks (kind, id);
CREATE INDEX tasks_provider_id ON tasks (provider, id);
CREATE INDEX tasks_owner_id ON tasks (owner, id);
CREATE INDEX tasks_created_at ON tasks (created_at);
-- `prompt LIKE '%needle%'` uses the trigram index instead of reading every row.
CREATE INDEX tasks_prompt_trgm ON tasks USING gin (prompt gin_trgm_ops);
