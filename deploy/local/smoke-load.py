#!/usr/bin/env python3
"""Posts N distinct, correctly signed Stripe-shaped events to a local receiver and reports
how they were answered. A smoke load for `paysync up` (the real load generator and the
benchmarks live in `just bench`). Standard library only.

    deploy/local/smoke-load.py --count 10000 --threads 16 [--url URL] [--secret S] [--prefix P]

The secret defaults to PAYSYNC_STRIPE_WEBHOOK_SECRET, else the public development secret
that `paysync up` falls back to.
"""
import argparse
import hashlib
import hmac
import http.client
import json
import os
import threading
import time
import urllib.parse
from collections import Counter

DEV_SECRET = "whsec_paysync_local_development_only"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--url", default="http://127.0.0.1:8080/webhooks/stripe")
    ap.add_argument("--secret", default=os.environ.get("PAYSYNC_STRIPE_WEBHOOK_SECRET", DEV_SECRET).split(",")[0])
    ap.add_argument("--prefix", default="evt_smoke_%d" % int(time.time()))
    args = ap.parse_args()
    url = urllib.parse.urlparse(args.url)
    statuses = Counter()
    lock = threading.Lock()
    next_i = [0]

    def worker():
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=30)
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= args.count:
                break
            event_id = "%s_%06d" % (args.prefix, i)
            body = json.dumps({
                "id": event_id, "object": "event", "api_version": "2020-03-02",
                "created": int(time.time()), "livemode": False, "type": "customer.updated",
                "data": {"object": {"id": "cus_smoke_%d" % (i % 500), "object": "customer"}},
            }, separators=(",", ":")).encode()
            t = int(time.time())
            sig = hmac.new(args.secret.encode(), b"%d." % t + body, hashlib.sha256).hexdigest()
            try:
                conn.request("POST", url.path, body=body, headers={
                    "Content-Type": "application/json", "Stripe-Signature": "t=%d,v1=%s" % (t, sig)})
                resp = conn.getresponse()
                resp.read()
                code = resp.status
            except OSError as e:
                code = type(e).__name__
                conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=30)
            with lock:
                statuses[code] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(args.threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - started
    print("prefix %s: %d posts in %.1f s (%.0f/s): %s" % (
        args.prefix, args.count, elapsed, args.count / elapsed, dict(statuses)))


if __name__ == "__main__":
    main()
