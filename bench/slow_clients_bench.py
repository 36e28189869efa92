"""Slow clients against gunicorn alone and against the production set-up (nginx in front).

    python bench/slow_clients_bench.py [--connections 50] [--samples 10]

Starts gunicorn as production does (gunicorn.conf.py, 2 workers) and nginx with deploy/nginx.conf
(the harness of tests/test_production.py), opens `--connections` connections that trickle their
request headers or bodies one byte every half second, and times fresh /healthz requests, first
straight at gunicorn, then through nginx. A request that takes 5 s or fails counts as 5 s.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_production import (  # noqa: E402
    SlowClients,
    free_port,
    healthz_times,
    start_gunicorn,
    start_nginx,
    stop,
)


def attack(port, connections, samples):
    slow = SlowClients(port, count=connections)
    try:
        time.sleep(2)           # the attack under way before /healthz is asked
        return healthz_times(port, samples)
    finally:
        slow.close()


def report(label, times):
    misses = sum(1 for t in times if t >= 5)
    print(f"{label:28} median {statistics.median(times):6.3f} s   max {max(times):6.3f} s   "
          f"unanswered within 5 s: {misses}/{len(times)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        app_port, proxy_port = free_port(), free_port()
        gunicorn = start_gunicorn(tmp, app_port)
        nginx = None
        try:
            nginx = start_nginx(tmp, proxy_port, app_port)
            print(f"{args.connections} slow connections (half trickling headers, half bodies), "
                  f"{args.samples} /healthz requests each:")
            report("gunicorn alone", attack(app_port, args.connections, args.samples))
            time.sleep(1)
            report("nginx in front (deploy/)", attack(proxy_port, args.connections, args.samples))
        finally:
            if nginx is not None:
                stop(nginx)
            stop(gunicorn)


if __name__ == "__main__":
    main()
