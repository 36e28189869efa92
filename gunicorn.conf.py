"""Production process model: `gunicorn -c gunicorn.conf.py "app:create_app()"`.

Every worker serves HTTP; exactly one of them (the holder of DATA_DIR/scheduler.lock, see
scheduler.py) runs the task pipeline, and a standby takes over within seconds if it dies.
No preload: each worker builds its own app after the fork, so no file descriptor or thread is
shared between workers.
"""

import os

bind = f"{os.environ.get('APP_HOST', '0.0.0.0')}:{os.environ.get('APP_PORT', '5000')}"
workers = int(os.environ.get("WEB_WORKERS", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
# Uploads carry two Base64 pictures of up to 10 MB each: allow slow clients some time.
timeout = 120
graceful_timeout = 30
preload_app = False
accesslog = "-"
# Never log query strings: LiblibAI-style signatures and keys must not reach the logs.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'


# ---- stopping a worker: its task pipeline first (see scheduler.py) --------------------------

def worker_exit(server, worker):
    """Stop this worker's pipeline before the interpreter shuts its thread pools: queued and
    interrupted work goes back for the next leader instead of failing."""
    import scheduler

    scheduler.stop_all()
