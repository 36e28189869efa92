-- Batch records (batch_store.py's JSON files), so every node sees every batch. A row keeps the
-- whole record unchanged (a copy both ways gives identical data) beside the columns looked up by:
-- a batch's page lists the owner's batches, and an upload finds the owner's batch by name.
CREATE TABLE batches (
    id          text PRIMARY KEY,           -- "b" + a task id: sorts by creation
    owner       text,
    name        text,
    created_at  text NOT NULL,              -- ISO 8601 UTC, as in the record
    record      jsonb NOT NULL
);
CREATE INDEX batches_owner_name ON batches (owner, name);
