"""Accounts in PostgreSQL: accounts.Accounts' interface over the `account_*` tables (migration 006).

Chosen for a studio whose tasks are in PostgreSQL (accounts.open_accounts), so every node sees
the same users, keys, sessions and login links. Each change is one transaction (a user's row is
locked with SELECT ... FOR UPDATE while it is changed), the same atomicity the JSON file's lock
gives; the checks that must not race are single statements: a user name is UNIQUE, and a login
link is spent by one `DELETE ... RETURNING`, so two requests with one link never both sign in.
Rows hold the JSON store's records unchanged (password hashes and SHA-256 digests of keys,
sessions and links, never the secrets), so `flask store copy` moves them both ways exactly.
Password rules, hashing and the answers are accounts.py's own.
"""

import json
import secrets
import time

import psycopg
from psycopg.types.json import Jsonb
from werkzeug.security import check_password_hash, generate_password_hash

import accounts
from accounts import (
    ADMIN,
    DEFAULT_SCOPES,
    KEY_PREFIX,
    LIMITS,
    LOGIN_LINK_SECONDS,
    SCOPES,
    SESSION_SECONDS,
    check_password_policy,
    digest,
    public,
)
from errors import N_, Conflict, NotFound, ValidationError


class PgAccounts(accounts.Accounts):
    """accounts.Accounts over PostgreSQL, sharing the task store's connection pool."""

    def __init__(self, store, env_api_keys="", clock=time.time):
        super().__init__(store.dir, env_api_keys, clock)
        self.store = store

    # ---- storage

    def _read(self):
        raise RuntimeError("PgAccounts keeps nothing in accounts.json")    # no method may fall back to it

    def _edit(self):
        raise RuntimeError("PgAccounts keeps nothing in accounts.json")

    def _tx(self, work):
        """`work(conn)` in one transaction on the store's pool."""
        def run(conn):
            with conn.transaction():
                return work(conn)
        return self.store.run(run)

    def _one(self, sql, args):
        row = self.store.run(lambda c: c.execute(sql, args).fetchone())
        return row[0] if row else None

    @staticmethod
    def _locked_user(conn, user_id):
        row = conn.execute("SELECT record FROM account_users WHERE id = %s FOR UPDATE", (user_id,)).fetchone()
        if row is None:
            raise NotFound(N_("No user '%(id)s'."), params={"id": user_id})
        return row[0]

    @staticmethod
    def _save_user(conn, user):
        conn.execute("UPDATE account_users SET record = %s WHERE id = %s", (Jsonb(user), user["id"]))

    def _change_user(self, user_id, change):
        """Apply `change(conn, user)` to the locked record in one transaction; the user's public record."""
        def work(conn):
            user = self._locked_user(conn, user_id)
            change(conn, user)
            self._save_user(conn, user)
            return public(user)
        return self._tx(work)

    # ---- users

    def user(self, user_id):
        return self._one("SELECT record FROM account_users WHERE id = %s", (user_id,))

    def user_by_name(self, username):
        wanted = (username or "").strip().lower() if isinstance(username, str) else ""
        return self._one("SELECT record FROM account_users WHERE username = %s", (wanted,))

    def users(self):
        rows = self.store.run(lambda c: c.execute("SELECT record FROM account_users").fetchall())
        return sorted((r[0] for r in rows), key=lambda u: u["created_at"])

    def ensure_admin(self, password=None, reset=False):
        """accounts.Accounts.ensure_admin: of several nodes starting at once, one makes the admin."""
        if password:
            try:
                check_password_policy(password, field="ADMIN_PASSWORD")
            except ValidationError as exc:
                raise ValueError(f"ADMIN_PASSWORD is refused: {exc.message}") from None
        if self.user(ADMIN) is None:
            generated = None if password else secrets.token_urlsafe(12)
            admin = self._new_user(ADMIN, password or generated, "admin", {}, user_id=ADMIN)
            made = self.store.run(lambda c: c.execute(
                "INSERT INTO account_users (id, username, record) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING RETURNING id", (ADMIN, ADMIN, Jsonb(admin))).fetchone())
            if made:
                return generated
        if password and reset:
            def apply(conn):
                admin = self._locked_user(conn, ADMIN)
                if not check_password_hash(admin["password_hash"], password):
                    admin["password_hash"] = generate_password_hash(password, method=accounts.PASSWORD_METHOD)
                    self._save_user(conn, admin)
                    conn.execute("DELETE FROM account_sessions WHERE user_id = %s", (ADMIN,))
            self._tx(apply)
        return None

    def create_user(self, username, password, *, role="user", **limits):
        username = accounts.valid_username(username)
        check_password_policy(password, username)
        user = self._new_user(username, password, role, limits)
        try:
            self.store.run(lambda c: c.execute(
                "INSERT INTO account_users (id, username, record) VALUES (%s, %s, %s)",
                (user["id"], username, Jsonb(user))))
        except psycopg.errors.UniqueViolation:
            raise Conflict(N_("There is already a user '%(name)s'."), params={"name": username}) from None
        return public(user)

    def set_limits(self, user_id, limits):
        return self._change_user(user_id, lambda conn, user: user["limits"].update(
            {k: v for k, v in limits.items() if k in LIMITS}))

    def set_password(self, user_id, password, *, keep_session=None, revoke_keys=()):
        """accounts.Accounts.set_password, in one transaction."""
        keep = digest(keep_session) if keep_session else ""

        def change(conn, user):
            check_password_policy(password, user["username"], field="new_password")
            user["password_hash"] = generate_password_hash(password, method=accounts.PASSWORD_METHOD)
            conn.execute("DELETE FROM account_sessions WHERE user_id = %s AND hash <> %s", (user_id, keep))
            if revoke_keys == "all":
                conn.execute("DELETE FROM account_api_keys WHERE user_id = %s", (user_id,))
            elif revoke_keys:
                conn.execute("DELETE FROM account_api_keys WHERE user_id = %s AND id = ANY(%s)",
                             (user_id, list(revoke_keys)))
        return self._change_user(user_id, change)

    def delete_user(self, user_id):
        def work(conn):
            if conn.execute("DELETE FROM account_users WHERE id = %s", (user_id,)).rowcount == 0:
                return False
            conn.execute("DELETE FROM account_api_keys WHERE user_id = %s", (user_id,))
            conn.execute("DELETE FROM account_sessions WHERE user_id = %s", (user_id,))
            return True
        return self._tx(work)

    # ---- webhooks

    def set_webhook(self, user_id, url):
        return self._change_user(user_id, lambda conn, user: user.update(
            webhook_url=url or None, webhook_url_set_at=time.time() if url else None))

    def rotate_webhook_secret(self, user_id):
        secret = "whsec_" + secrets.token_urlsafe(32)
        self._change_user(user_id, lambda conn, user: user.update(webhook_secret=secret))
        return secret

    # ---- sessions

    def create_session(self, user_id):
        token, now = secrets.token_urlsafe(32), self.clock()
        record = {"user_id": user_id, "created_at": now, "expires_at": now + SESSION_SECONDS}

        def work(conn):
            conn.execute("DELETE FROM account_sessions WHERE expires_at <= %s", (now,))
            conn.execute("INSERT INTO account_sessions (hash, user_id, expires_at, record) VALUES (%s, %s, %s, %s)",
                         (digest(token), user_id, record["expires_at"], Jsonb(record)))
        self._tx(work)
        return token

    def session_user(self, token):
        if not isinstance(token, str) or not token:
            return None
        return self._one("SELECT u.record FROM account_sessions s JOIN account_users u ON u.id = s.user_id "
                         "WHERE s.hash = %s AND s.expires_at > %s", (digest(token), self.clock()))

    def end_session(self, token):
        if isinstance(token, str) and token:
            self.store.run(lambda c: c.execute("DELETE FROM account_sessions WHERE hash = %s", (digest(token),)))

    # ---- API keys

    def create_api_key(self, user_id, name, scopes=DEFAULT_SCOPES, expires_in_days=None):
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = accounts.new_key_record(key, user_id, name, scopes, expires_in_days)

        def work(conn):
            user = self._locked_user(conn, user_id)
            accounts.check_key_scopes(user, record)
            conn.execute("INSERT INTO account_api_keys (hash, id, user_id, record) VALUES (%s, %s, %s, %s)",
                         (record["hash"], record["id"], user_id, Jsonb(record)))
        self._tx(work)
        return key, public(record)

    def api_keys(self, user_id):
        rows = self.store.run(lambda c: c.execute(
            "SELECT record FROM account_api_keys WHERE user_id = %s ORDER BY seq", (user_id,)).fetchall())
        return [public(r[0]) for r in rows]

    def delete_api_key(self, user_id, key_id):
        gone = self.store.run(lambda c: c.execute(
            "DELETE FROM account_api_keys WHERE id = %s AND user_id = %s", (key_id, user_id)).rowcount)
        if not gone:
            raise NotFound(N_("No such key."))

    def user_for_key(self, key):
        if self._is_env_key(key):
            return self.user(ADMIN), SCOPES
        # A lookup by the digest of a long random key: its timing tells nothing about other keys.
        row = self.store.run(lambda c: c.execute(
            "SELECT k.record, u.record FROM account_api_keys k LEFT JOIN account_users u ON u.id = k.user_id "
            "WHERE k.hash = %s", (digest(key),)).fetchone())
        if row is None:
            return None, ()
        record, user = row
        if record.get("expires_at") and record["expires_at"] <= time.time():
            return None, ()
        return (user, tuple(record.get("scopes") or DEFAULT_SCOPES)) if user else (None, ())

    # ---- one-time login links

    def create_login_link(self, user_id, ttl=LOGIN_LINK_SECONDS):
        token, now = secrets.token_urlsafe(32), time.time()

        def work(conn):
            conn.execute("DELETE FROM account_login_links WHERE expires_at <= %s", (now,))
            conn.execute("INSERT INTO account_login_links (hash, user_id, expires_at) VALUES (%s, %s, %s)",
                         (digest(token), user_id, now + ttl))
        self._tx(work)
        return token

    def redeem_login_link(self, token):
        """The user of a valid, unused link, else None: one DELETE spends it, so only one request wins."""
        now = time.time()

        def work(conn):
            row = conn.execute("DELETE FROM account_login_links WHERE hash = %s AND expires_at > %s "
                               "RETURNING user_id", (digest(token or ""), now)).fetchone()
            conn.execute("DELETE FROM account_login_links WHERE expires_at <= %s", (now,))
            if row is None:
                return None
            found = conn.execute("SELECT record FROM account_users WHERE id = %s", (row[0],)).fetchone()
            return found[0] if found else None
        return self._tx(work)

    # ---- the whole data, for `flask store copy`

    def export(self):
        """Everything, in accounts.json's shape."""
        def read(conn):
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                users = {r[0]: r[1] for r in conn.execute("SELECT id, record FROM account_users")}
                keys = [r[0] for r in conn.execute("SELECT record FROM account_api_keys ORDER BY seq")]
                links = [{"hash": h, "user_id": u, "expires_at": e} for h, u, e in conn.execute(
                    "SELECT hash, user_id, expires_at FROM account_login_links ORDER BY seq")]
                sessions = {r[0]: r[1] for r in conn.execute("SELECT hash, record FROM account_sessions")}
            return {"users": users, "api_keys": keys, "login_links": links, "sessions": sessions}
        return self.store.run(read)

    def replace_all(self, data):
        """Replace everything with `data` (accounts.json's shape), in one transaction."""
        data = accounts.upgraded(json.loads(json.dumps(data)))

        def write(conn):
            conn.execute("DELETE FROM account_users; DELETE FROM account_api_keys; "
                         "DELETE FROM account_sessions; DELETE FROM account_login_links")
            for user_id, user in data["users"].items():
                conn.execute("INSERT INTO account_users (id, username, record) VALUES (%s, %s, %s)",
                             (user_id, user["username"], Jsonb(user)))
            for key in data["api_keys"]:
                conn.execute("INSERT INTO account_api_keys (hash, id, user_id, record) VALUES (%s, %s, %s, %s)",
                             (key["hash"], key["id"], key["user_id"], Jsonb(key)))
            for hash_, session in data["sessions"].items():
                conn.execute("INSERT INTO account_sessions (hash, user_id, expires_at, record) "
                             "VALUES (%s, %s, %s, %s)", (hash_, session["user_id"], session["expires_at"],
                                                         Jsonb(session)))
            for link in data["login_links"]:
                conn.execute("INSERT INTO account_login_links (hash, user_id, expires_at) VALUES (%s, %s, %s)",
                             (link["hash"], link["user_id"], link["expires_at"]))
        self._tx(write)
