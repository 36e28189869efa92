"""Users, their limits, API keys, sessions and one-time login links, kept in `DATA_DIR/accounts.json`.

A small file rewritten whole under an exclusive lock (atomic replace + fsync), read again by
every process whenever it changed. Passwords are werkzeug scrypt hashes; API keys, session ids
and login links are random tokens stored only as SHA-256 digests (they are long and random, so a
fast hash is enough) and shown in full once, when made. Keys from the `API_KEYS` setting act for
the admin with every scope.

A user's `id` is made once and never reused: tasks, keys, sessions and the spending ledger point
at it, so a user deleted and made again under the same name starts with nothing of the old one.
Sessions live here, not only in the signed cookie, so signing out or changing the password ends
them for real.
"""

import functools
import hashlib
import hmac
import json
import secrets
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from werkzeug.security import check_password_hash, generate_password_hash

from errors import N_, Conflict, NotFound, ValidationError
from fileio import atomic_write, locked

ADMIN = "admin"
KEY_PREFIX = "sk-studio-"
LOGIN_LINK_SECONDS = 15 * 60
SESSION_SECONDS = 14 * 24 * 3600
SCOPES = ("generate", "read", "admin")
DEFAULT_SCOPES = ("generate", "read")
# Per-user limits the admin sets; None means no limit. Daily counts reset at 00:00 UTC.
LIMITS = ("images_per_day", "videos_per_day", "max_resolution", "max_duration", "max_in_flight")
MIN_PASSWORD = 10
# werkzeug's scrypt (N=2^15, r=8, p=1: about 0.1 s and 32 MB per check). The tests lower it
# (tests/conftest.py), where thousands of sign-ins would otherwise spend minutes hashing.
PASSWORD_METHOD = "scrypt"


@functools.cache
def _dummy_hash(method):
    """Checked against when the user does not exist, so a wrong name costs as long as a wrong password."""
    return generate_password_hash("not a password", method=method)
_COMMON_PASSWORDS = frozenset(
    (Path(__file__).with_name("common_passwords.txt")).read_text().split())


def digest(token):
    return hashlib.sha256(token.encode()).hexdigest()


def check_password_policy(password, username="", field="password"):
    """Refuse passwords that are short, blank, repetitive, common, or the user name itself."""
    password = password if isinstance(password, str) else ""
    problem = None
    if len(password) < MIN_PASSWORD:
        problem = N_("A password needs at least %(min)d characters.")
    elif not password.strip():
        problem = N_("A password cannot be only spaces.")
    elif any(ord(c) < 32 or ord(c) == 127 for c in password):
        problem = N_("A password cannot contain control characters.")
    elif len(set(password)) < 4:
        problem = N_("A password needs at least %(different)d different characters.")
    elif password.lower() in _COMMON_PASSWORDS or (username and username.lower() in password.lower()):
        problem = N_("This password is too easy to guess (a common password, or the user name): choose another.")
    if problem:
        raise ValidationError(problem, code="weak_password", field=field, status=422,
                              params={"min": MIN_PASSWORD, "different": 4})


class Accounts:
    def __init__(self, data_dir, env_api_keys="", clock=time.time):
        self.path = Path(data_dir) / "accounts.json"
        self.lock_path = Path(data_dir) / "accounts.lock"
        self._env_keys = {digest(k.strip()) for k in str(env_api_keys or "").split(",") if k.strip()}
        self._mutex = threading.Lock()
        self._cache = None
        self._stamp = None
        self.clock = clock

    # ---- storage

    def _read(self):
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return _empty()
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._mutex:
            if stamp != self._stamp:
                self._cache, self._stamp = upgraded(json.loads(self.path.read_text())), stamp
            return json.loads(json.dumps(self._cache))      # callers may not change the cache

    @contextmanager
    def _edit(self):
        """The current data under the lock; what the block leaves in it is written atomically."""
        with locked(self.lock_path):
            data = self._read()
            yield data
            atomic_write(self.path, json.dumps(data, indent=1))

    # ---- users

    def user(self, user_id):
        return self._read()["users"].get(user_id)

    def user_by_name(self, username):
        wanted = (username or "").strip().lower() if isinstance(username, str) else ""
        return next((u for u in self._read()["users"].values() if u["username"] == wanted), None)

    def users(self):
        return sorted(self._read()["users"].values(), key=lambda u: u["created_at"])

    def ensure_admin(self, password=None, reset=False):
        """Make sure the admin exists. Returns the generated password when one was made, else None.

        `password` (ADMIN_PASSWORD) is used only when the admin is first made, so a password
        changed on the account page stays changed; `reset` (ADMIN_PASSWORD_RESET) applies it again.
        """
        if password:
            try:
                check_password_policy(password, field="ADMIN_PASSWORD")
            except ValidationError as exc:
                raise ValueError(f"ADMIN_PASSWORD is refused: {exc.message}") from None
        generated = None
        with self._edit() as data:
            admin = data["users"].get(ADMIN)
            if admin is None:
                generated = None if password else secrets.token_urlsafe(12)
                data["users"][ADMIN] = self._new_user(ADMIN, password or generated, "admin", {}, user_id=ADMIN)
            elif password and reset and not check_password_hash(admin["password_hash"], password):
                admin["password_hash"] = generate_password_hash(password, method=PASSWORD_METHOD)
                _end_sessions(data, ADMIN)
        return generated

    def create_user(self, username, password, *, role="user", **limits):
        username = valid_username(username)
        check_password_policy(password, username)
        with self._edit() as data:
            if any(u["username"] == username for u in data["users"].values()):
                raise Conflict(N_("There is already a user '%(name)s'."), params={"name": username})
            user = self._new_user(username, password, role, limits)
            data["users"][user["id"]] = user
            return public(user)

    @staticmethod
    def _new_user(username, password, role, limits, user_id=None):
        return {"id": user_id or f"u-{secrets.token_hex(8)}", "username": username, "role": role,
                "created_at": time.time(), "password_hash": generate_password_hash(password, method=PASSWORD_METHOD),
                "limits": {name: limits.get(name) for name in LIMITS}}

    def set_limits(self, user_id, limits):
        """Change some of a user's limits (None removes one)."""
        with self._edit() as data:
            user = data["users"].get(user_id)
            if user is None:
                raise NotFound(N_("No user '%(id)s'."), params={"id": user_id})
            user["limits"].update({k: v for k, v in limits.items() if k in LIMITS})
            return public(user)

    def set_password(self, user_id, password, *, keep_session=None, revoke_keys=()):
        """Change a password; every other session of the user ends, and the chosen API keys
        (ids, or "all") are revoked."""
        with self._edit() as data:
            user = data["users"].get(user_id)
            if user is None:
                raise NotFound(N_("No user '%(id)s'."), params={"id": user_id})
            check_password_policy(password, user["username"], field="new_password")
            user["password_hash"] = generate_password_hash(password, method=PASSWORD_METHOD)
            _end_sessions(data, user_id, keep=digest(keep_session) if keep_session else None)
            data["api_keys"] = [k for k in data["api_keys"] if not (
                k["user_id"] == user_id and (revoke_keys == "all" or k["id"] in revoke_keys))]
            return public(user)

    def delete_user(self, user_id):
        """Remove a user, their API keys and sessions; False if there was none. Their tasks stay
        (the admin sees them) and their id is never given to anyone else."""
        with self._edit() as data:
            if data["users"].pop(user_id, None) is None:
                return False
            data["api_keys"] = [k for k in data["api_keys"] if k["user_id"] != user_id]
            _end_sessions(data, user_id)
            return True

    def check_password(self, username, password):
        """The user if the password is right, else None (same work either way)."""
        user = self.user_by_name(username)
        password = password if isinstance(password, str) else ""
        ok = check_password_hash(user["password_hash"] if user else _dummy_hash(PASSWORD_METHOD), password)
        return user if user and ok else None

    # ---- webhooks (webhooks.py signs and sends; the secret must be kept readable to sign with)

    def set_webhook(self, user_id, url):
        """Set (or, with None, remove) the user's default webhook URL; tasks finished from now on use it."""
        with self._edit() as data:
            user = data["users"].get(user_id)
            if user is None:
                raise NotFound(N_("No user '%(id)s'."), params={"id": user_id})
            user.update(webhook_url=url or None, webhook_url_set_at=time.time() if url else None)
            return public(user)

    def rotate_webhook_secret(self, user_id):
        """A new signing secret for the user's webhooks, replacing the old one; returned once."""
        secret = "whsec_" + secrets.token_urlsafe(32)
        with self._edit() as data:
            user = data["users"].get(user_id)
            if user is None:
                raise NotFound(N_("No user '%(id)s'."), params={"id": user_id})
            user["webhook_secret"] = secret
        return secret

    # ---- sessions

    def create_session(self, user_id):
        """A new session id for a signed-in browser (kept only as a digest)."""
        token = secrets.token_urlsafe(32)
        with self._edit() as data:
            now = self.clock()
            data["sessions"] = {h: s for h, s in data["sessions"].items() if s["expires_at"] > now}
            data["sessions"][digest(token)] = {"user_id": user_id, "created_at": now,
                                               "expires_at": now + SESSION_SECONDS}
        return token

    def session_user(self, token):
        """The user of a live session, else None."""
        if not isinstance(token, str) or not token:
            return None
        data = self._read()
        found = data["sessions"].get(digest(token))
        if found is None or found["expires_at"] <= self.clock():
            return None
        return data["users"].get(found["user_id"])

    def end_session(self, token):
        if isinstance(token, str) and token:
            with self._edit() as data:
                data["sessions"].pop(digest(token), None)

    # ---- API keys

    def create_api_key(self, user_id, name, scopes=DEFAULT_SCOPES, expires_in_days=None):
        """A new key for the user: (the key, shown once; its public record)."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = new_key_record(key, user_id, name, scopes, expires_in_days)
        with self._edit() as data:
            user = data["users"].get(user_id)
            if user is None:
                raise NotFound(N_("No user '%(id)s'."), params={"id": user_id})
            check_key_scopes(user, record)
            data["api_keys"].append(record)
        return key, public(record)

    def api_keys(self, user_id):
        return [public(k) for k in self._read()["api_keys"] if k["user_id"] == user_id]

    def delete_api_key(self, user_id, key_id):
        with self._edit() as data:
            kept = [k for k in data["api_keys"] if not (k["id"] == key_id and k["user_id"] == user_id)]
            if len(kept) == len(data["api_keys"]):
                raise NotFound(N_("No such key."))
            data["api_keys"] = kept

    def user_for_key(self, key):
        """(user, scopes) for a valid, unexpired API key, or (None, ())."""
        wanted = digest(key)
        if self._is_env_key(key):
            return self.user(ADMIN), SCOPES
        data = self._read()
        for record in data["api_keys"]:
            if hmac.compare_digest(wanted, record["hash"]):
                if record.get("expires_at") and record["expires_at"] <= time.time():
                    return None, ()
                user = data["users"].get(record["user_id"])
                return (user, tuple(record.get("scopes") or DEFAULT_SCOPES)) if user else (None, ())
        return None, ()

    def _is_env_key(self, key):
        wanted = digest(key)
        return any(hmac.compare_digest(wanted, env) for env in self._env_keys)

    # ---- one-time login links

    def create_login_link(self, user_id, ttl=LOGIN_LINK_SECONDS):
        token = secrets.token_urlsafe(32)
        with self._edit() as data:
            now = time.time()
            data["login_links"] = [x for x in data["login_links"] if x["expires_at"] > now]
            data["login_links"].append({"hash": digest(token), "user_id": user_id, "expires_at": now + ttl})
        return token

    def redeem_login_link(self, token):
        """The user of a valid, unused link (which is then spent), else None."""
        wanted = digest(token or "")
        with self._edit() as data:
            now = time.time()
            match = next((x for x in data["login_links"]
                          if hmac.compare_digest(x["hash"], wanted) and x["expires_at"] > now), None)
            data["login_links"] = [x for x in data["login_links"] if x is not match and x["expires_at"] > now]
            return data["users"].get(match["user_id"]) if match else None


    # ---- the whole data, for `flask store copy`

    def export(self):
        """Everything, in accounts.json's shape."""
        return self._read()

    def replace_all(self, data):
        """Replace everything with `data` (accounts.json's shape), in one atomic write."""
        with self._edit() as current:
            current.clear()
            current.update(upgraded(json.loads(json.dumps(data))))


def open_accounts(store, env_api_keys=""):
    """The accounts beside a task store: in PostgreSQL when the tasks are there, else accounts.json."""
    if getattr(store, "conninfo", None):
        from pg_accounts import PgAccounts

        return PgAccounts(store, env_api_keys)
    return Accounts(store.dir, env_api_keys)


def valid_username(username):
    """The lower-cased user name, or ValidationError when it is not 1–32 letters, digits, '-' or '_'."""
    username = (username or "").strip().lower() if isinstance(username, str) else ""
    if (not username or not username.isascii() or len(username) > 32
            or not username.replace("-", "").replace("_", "").isalnum()):
        raise ValidationError(N_("A user name is 1–32 letters, digits, '-' or '_'."), code="invalid_field",
                              field="username")
    return username


def new_key_record(key, user_id, name, scopes, expires_in_days):
    """The stored record of a new API key (its digest, never the key)."""
    now = time.time()
    return {"id": secrets.token_hex(6), "user_id": user_id, "name": (name or "key").strip()[:60] or "key",
            "hash": digest(key), "hint": key[:len(KEY_PREFIX) + 4] + "…", "created_at": now,
            "scopes": sorted(set(scopes)),
            "expires_at": now + expires_in_days * 86400 if expires_in_days else None}


def check_key_scopes(user, record):
    if "admin" in record["scopes"] and user["role"] != "admin":
        raise ValidationError(N_("Only the admin's keys can have the admin scope."), code="invalid_field",
                              field="scopes", status=422)


def _empty():
    return {"users": {}, "api_keys": [], "login_links": [], "sessions": {}}


def upgraded(data):
    """Accounts written by older versions: daily quotas under `quota`, no sessions."""
    data = {**_empty(), **data}
    for user in data["users"].values():
        old = user.pop("quota", None) or {}
        limits = user.setdefault("limits", {})
        limits.setdefault("images_per_day", old.get("images"))
        limits.setdefault("videos_per_day", old.get("videos"))
        for name in LIMITS:
            limits.setdefault(name, None)
    return data


def _end_sessions(data, user_id, keep=None):
    data["sessions"] = {h: s for h, s in data["sessions"].items() if s["user_id"] != user_id or h == keep}


def public(record):
    """A record without its secrets (hashes, the webhook signing secret)."""
    return {k: v for k, v in record.items() if k not in ("password_hash", "hash", "webhook_secret")}
