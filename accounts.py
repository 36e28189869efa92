"""Users, their API keys and one-time login links, kept in `DATA_DIR/accounts.json`.

A small file rewritten whole under an exclusive lock (atomic replace + fsync), read again by
every process whenever it changed. Passwords are werkzeug scrypt hashes; API keys and login links
are random tokens stored only as SHA-256 digests (they are long and random, so a fast hash is
enough) and shown in full once, when made. Keys from the `API_KEYS` setting act for the admin.
"""

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from werkzeug.security import check_password_hash, generate_password_hash

from errors import Conflict, NotFound, ValidationError

ADMIN = "admin"
KEY_PREFIX = "sk-studio-"
LOGIN_LINK_SECONDS = 15 * 60
# Checked against when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = generate_password_hash("not a password", method="scrypt")


def digest(token):
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    def __init__(self, data_dir, env_api_keys=""):
        self.path = Path(data_dir) / "accounts.json"
        self.lock_path = Path(data_dir) / "accounts.lock"
        self._env_keys = {digest(k.strip()) for k in str(env_api_keys or "").split(",") if k.strip()}
        self._mutex = threading.Lock()
        self._cache = None
        self._stamp = None

    # ---- storage

    def _read(self):
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {"users": {}, "api_keys": [], "login_links": []}
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._mutex:
            if stamp != self._stamp:
                self._cache, self._stamp = json.loads(self.path.read_text()), stamp
            return json.loads(json.dumps(self._cache))      # callers may not change the cache

    @contextmanager
    def _edit(self):
        """The current data under the lock; what the block leaves in it is written atomically."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = self._read()
            yield data
            tmp = self.path.with_name(f"accounts.{os.getpid()}.tmp")
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            os.close(fd)

    # ---- users

    def user(self, user_id):
        return self._read()["users"].get(user_id)

    def users(self):
        return sorted(self._read()["users"].values(), key=lambda u: u["created_at"])

    def ensure_admin(self, password=None):
        """Make sure the admin exists. Returns the generated password when one was made, else None.

        With `password` (ADMIN_PASSWORD) the admin's password follows the setting.
        """
        generated = None
        with self._edit() as data:
            admin = data["users"].get(ADMIN)
            if admin is None:
                generated = None if password else secrets.token_urlsafe(12)
                data["users"][ADMIN] = self._new_user(ADMIN, password or generated, "admin", None, None)
            elif password and not check_password_hash(admin["password_hash"], password):
                admin["password_hash"] = generate_password_hash(password, method="scrypt")
        return generated

    def create_user(self, username, password, *, role="user", images_per_day=None, videos_per_day=None):
        username = (username or "").strip().lower()
        if not username.isascii() or not username.replace("-", "").replace("_", "").isalnum() or len(username) > 32:
            raise ValidationError("A user name is 1–32 letters, digits, '-' or '_'.", code="invalid_field",
                                  field="username")
        if len(password or "") < 8:
            raise ValidationError("A password needs at least 8 characters.", code="invalid_field", field="password")
        with self._edit() as data:
            if username in data["users"]:
                raise Conflict(f"There is already a user '{username}'.")
            data["users"][username] = self._new_user(username, password, role, images_per_day, videos_per_day)
            return _public(data["users"][username])

    @staticmethod
    def _new_user(username, password, role, images_per_day, videos_per_day):
        return {"id": username, "username": username, "role": role, "created_at": time.time(),
                "password_hash": generate_password_hash(password, method="scrypt"),
                "quota": {"images": images_per_day, "videos": videos_per_day}}

    def set_password(self, user_id, password):
        if len(password or "") < 8:
            raise ValidationError("A password needs at least 8 characters.", code="invalid_field",
                                  field="new_password")
        with self._edit() as data:
            user = data["users"].get(user_id)
            if user is None:
                raise NotFound(f"No user '{user_id}'.")
            user["password_hash"] = generate_password_hash(password, method="scrypt")
            return user

    def delete_user(self, user_id):
        """Remove a user and their API keys; False if there was none. Their tasks stay (the admin sees them)."""
        with self._edit() as data:
            if data["users"].pop(user_id, None) is None:
                return False
            data["api_keys"] = [k for k in data["api_keys"] if k["user_id"] != user_id]
            return True

    def check_password(self, username, password):
        """The user if the password is right, else None (same work either way)."""
        user = self._read()["users"].get((username or "").strip().lower())
        ok = check_password_hash(user["password_hash"] if user else _DUMMY_HASH, password or "")
        return user if user and ok else None

    # ---- API keys

    def create_api_key(self, user_id, name):
        """A new key for the user: (the key, shown once; its public record)."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = {"id": secrets.token_hex(6), "user_id": user_id, "name": (name or "key").strip()[:60],
                  "hash": digest(key), "hint": key[:len(KEY_PREFIX) + 4] + "…", "created_at": time.time()}
        with self._edit() as data:
            if user_id not in data["users"]:
                raise NotFound(f"No user '{user_id}'.")
            data["api_keys"].append(record)
        return key, _public(record)

    def api_keys(self, user_id):
        return [_public(k) for k in self._read()["api_keys"] if k["user_id"] == user_id]

    def delete_api_key(self, user_id, key_id):
        with self._edit() as data:
            kept = [k for k in data["api_keys"] if not (k["id"] == key_id and k["user_id"] == user_id)]
            if len(kept) == len(data["api_keys"]):
                raise NotFound("No such key.")
            data["api_keys"] = kept

    def user_for_key(self, key):
        """The user an API key belongs to, or None."""
        wanted = digest(key)
        if any(hmac.compare_digest(wanted, env) for env in self._env_keys):
            return self.user(ADMIN)
        data = self._read()
        for record in data["api_keys"]:
            if hmac.compare_digest(wanted, record["hash"]):
                return data["users"].get(record["user_id"])
        return None

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


def _public(record):
    """A record without its secrets (hashes)."""
    return {k: v for k, v in record.items() if k not in ("password_hash", "hash")}
