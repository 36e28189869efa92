"""Production process model: `gunicorn -c gunicorn.conf.py "app:create_app()"`, behind nginx.

Every worker serves HTTP; exactly one of them (the holder of DATA_DIR/scheduler.lock, see
scheduler.py) runs the task pipeline, and a standby takes over within seconds if it dies.
No preload: each worker builds its own app after the fork, so no file descriptor or thread is
shared between workers.

gunicorn's sync workers are held by a client for as long as it takes to send its request, so a
few slow clients can occupy all of them. Production puts nginx in front (deploy/nginx.conf):
it reads whole requests before passing them on. Hence gunicorn listens on 127.0.0.1 unless
APP_HOST says otherwise (the Docker image sets it), and trusts X-Forwarded-* only from there.
"""

import os

bind = f"{os.environ.get('APP_HOST', '127.0.0.1')}:{os.environ.get('APP_PORT', '5000')}"
workers = int(os.environ.get("WEB_WORKERS", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
# Uploads carry two Base64 pictures of up to 10 MB each: allow slow clients some time.
timeout = 120
graceful_timeout = 30
preload_app = False
# The proxy in front runs on the same host (or network namespace, docker-compose.yml).
forwarded_allow_ips = "127.0.0.1"
# No runtime control socket (gunicornc): nothing but the HTTP port to reach the process by.
control_socket_disable = True
# Files the studio writes (tasks, accounts, pictures, the signing key) are for its own user: 0600.
# gunicorn applies `umask` only to its own sockets and temporary files, so set the process's too;
# this file runs in the master before the workers fork, and they inherit it.
umask = 0o077
os.umask(umask)
accesslog = "-"
# Never log query strings: LiblibAI-style signatures and keys must not reach the logs. Behind nginx
# the peer is always 127.0.0.1: X-Forwarded-For (set by nginx, not passed through) names the client.
access_log_format = '%(h)s %({x-forwarded-for}i)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'


# ---- stopping a worker: its task pipeline first (see scheduler.py) --------------------------

def worker_exit(server, worker):
    """Stop this worker's pipeline before the interpreter shuts its thread pools: queued and
    interrupted work goes back for the next leader instead of failing."""
    import scheduler

    scheduler.stop_all()
