"""Several studio nodes sharing one pipeline over PostgreSQL: who does what, and for how long.

Used by scheduler.py only when the task store is PostgreSQL; with the JSON store the pipeline is
one leader per DATA_DIR, as before. On PostgreSQL every node runs a pipeline, and:

- polling and downloading are shared per task: a node works only on the tasks it has claimed
  (`claimed_by`, `claim_until`: a lease renewed on every pass, taken with `FOR UPDATE SKIP LOCKED`
  so two nodes never claim one task). A node killed with SIGKILL stops renewing; once its leases
  run out another node claims its tasks and carries on from the records. A node that stops
  cleanly releases its claims at once.
- local-engine tasks (STICKY_PROVIDERS) stay with the node that submitted them: the render runs
  in that process and its progress is in memory. The leader dispatched them, so an unclaimed one
  is the leader's to claim; then it is renewed by that node beyond any share or lease while the
  node's heartbeat row (pipeline_nodes, written by every claim) is fresh. Only when a node stops
  heart-beating (it died) does another node take its local tasks, and renders each once again:
  the engine is deterministic and nothing is paid. A node that stops cleanly releases them.
- dispatch, and the jobs that must run once (backups, compaction, the janitor, webhook delivery),
  run only on the cluster leader: the node holding a session-level `pg_try_advisory_lock` on a
  connection of its own. PostgreSQL drops the lock when that session ends (the node died, or its
  connection broke), and another node takes it at its next heartbeat. One dispatcher for the
  whole cluster is what makes each provider's concurrency cap count the tasks in flight on every
  node, and keeps a submit at most once per task: the attempt is written to the task row
  (`submit_started_at`, under its row lock) before the submit is sent, so a leader that dies
  between the provider's accept and the record update leaves a task the next leader reconciles
  with the provider instead of sending it again.
"""

import logging
import os
import socket
import threading

import psycopg

log = logging.getLogger(__name__)

LEADER_KEY = 7_211_604_160_002      # the advisory lock of the cluster leader (migrations use ...001)
LEASE_SECONDS = 30
CLAIM_BATCH = 100                   # tasks one node claims per job pass, so idle nodes find work too
# Providers whose tasks stay on the node that submitted them: the local engine renders in that
# process and keeps the progress in memory, so another node polling the task would render it again.
STICKY_PROVIDERS = ("local",)


def node_id(name=None):
    """This process's name among the nodes: NODE_NAME (or the host name) and the pid."""
    return f"{name or socket.gethostname()}:{os.getpid()}"


class ClusterLeader:
    """A session-level advisory lock held on a connection of its own while this node leads."""

    def __init__(self, conninfo, name=""):
        self.conninfo, self.name = conninfo, name      # the name shows in pg_stat_activity
        self._conn = None
        self._guard = threading.Lock()

    def try_acquire(self):
        """True while this node leads the cluster (checks its session is still alive)."""
        with self._guard:
            if self._conn is not None:
                try:
                    self._conn.execute("SELECT 1")
                    return True
                except psycopg.Error:
                    log.warning("the cluster leader's database session broke; leadership is lost")
                    self._drop()
            try:
                # Keepalives: a leader whose host vanished loses the lock in about 25 s, not hours.
                conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10,
                                       keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
                                       application_name=f"studio-leader {self.name}"[:63])
            except psycopg.Error:
                log.warning("cannot reach the database to lead the cluster", exc_info=True)
                return False
            try:
                if conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_KEY,)).fetchone()[0]:
                    self._conn = conn
                    return True
            except psycopg.Error:
                log.warning("cannot take the cluster leader's lock", exc_info=True)
            conn.close()
            return False

    @property
    def held(self):
        return self._conn is not None

    def _drop(self):
        try:
            self._conn.close()
        finally:
            self._conn = None

    def release(self):
        with self._guard:
            if self._conn is not None:
                self._drop()        # closing the session releases the advisory lock


class ClaimedTasks:
    """The task store as one node's poll and download jobs see it: `ids_with_status` claims (or
    renews) the tasks this node works on and returns only those; everything else is the store's.
    `leading()` says whether this node leads (dispatches): unclaimed sticky tasks are its own."""

    def __init__(self, store, node, lease_seconds=LEASE_SECONDS, batch=CLAIM_BATCH, leading=lambda: False):
        self._store, self.node, self.lease_seconds, self.batch = store, node, lease_seconds, batch
        self.leading = leading

    def ids_with_status(self, statuses, since=None):
        return self._store.claim(statuses, self.node, self.lease_seconds, self.batch, since=since,
                                 sticky=STICKY_PROVIDERS, leading=self.leading())

    def __len__(self):
        return len(self._store)

    def __getattr__(self, name):
        return getattr(self._store, name)


class SharedPipeline:
    """What scheduler.Pipeline needs to share the work with the other nodes."""

    ONCE = frozenset({"_dispatch", "_storyboards", "_compact", "_janitor", "_backup", "_webhooks"})

    def __init__(self, store, node_name=None, lease_seconds=LEASE_SECONDS, batch=CLAIM_BATCH):
        self.store = store
        self.node_name = node_name or socket.gethostname()
        self.node = node_id(self.node_name)
        self.leader = ClusterLeader(store.conninfo, self.node)
        self.claimed = ClaimedTasks(store, self.node, lease_seconds, batch, leading=lambda: self.leader.held)

    def may_run(self, job_name):
        """Whether this node runs `job_name` now: shared jobs always, once-only ones when it leads."""
        return job_name not in self.ONCE or self.leader.try_acquire()

    def stop(self):
        """Give up the cluster leadership and every claim (the tasks go on on other nodes)."""
        self.leader.release()
        try:
            released = self.store.release_claims(self.node)
            log.info("node %s released %d task claim(s)", self.node, released)
        except OSError:
            log.warning("node %s could not release its claims; they expire on their own", self.node)


def for_store(store, node_name=None, lease_seconds=LEASE_SECONDS):
    """A SharedPipeline when `store` is PostgreSQL (it can claim), else None."""
    if not hasattr(store, "claim"):
        return None
    return SharedPipeline(store, node_name, lease_seconds)
