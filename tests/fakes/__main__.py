"""Run one provider's local protocol server by hand: `python -m tests.fakes kling --port 9001`."""

import argparse
import importlib
import time

FAKES = ("kling", "ai302", "dashscope", "liblib", "wan_server")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("provider", choices=FAKES)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--polls", type=int, default=3, help="status queries before a task finishes")
    args = parser.parse_args()
    module = importlib.import_module(f"tests.fakes.{args.provider}")
    server = module.Server(polls_to_finish=args.polls)
    url = server.start(args.host, args.port)
    print(f"fake {args.provider} listening on {url}")
    for line in module.usage(url):
        print(line)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
