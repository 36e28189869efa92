-- The nodes running a pipeline, as last seen by their claims: a node takes at most its fair share
-- (the claimable tasks divided by the nodes seen within a lease), so work spreads over all nodes.
CREATE TABLE pipeline_nodes (
    node  text PRIMARY KEY,
    seen  timestamptz NOT NULL
);
