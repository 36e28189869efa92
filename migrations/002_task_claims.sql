-- Several studio nodes share the pipeline: a task being polled or downloaded is claimed by one
-- node until claim_until (a lease the node renews on every pass); a node that dies stops renewing,
-- and once the lease has run out another node claims the task.
ALTER TABLE tasks ADD COLUMN claimed_by text, ADD COLUMN claim_until timestamptz;
CREATE INDEX tasks_claim ON tasks (claimed_by, claim_until);
