"""An open-loop load generator: the i-th request is due at start + i / rate and
is sent then whether or not earlier ones have answered, and its latency is
counted from that due time, so a server that falls behind is charged for the
queue it causes (no coordinated omission).

Each of up to `max_in_flight` threads keeps one keep-alive connection, claims
the next due request, waits for its time and sends it; when every thread is
waiting on an answer, the next request goes out late, and that lateness is
part of its latency.
"""

import http.client
import math
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

LATE_MS = 10.0  # a send that starts later than this after its due time counts as late


def percentile(ordered, percent):
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def run(url, rate, seconds, body=None, headers=None, max_in_flight=64, timeout=10.0):
    """Sends int(rate * seconds) requests to url on schedule: a POST of
    body(index) (bytes) when body is given, else a GET. Returns the offered
    rate, the rate sends actually started at, the rate answers came back at,
    p50/p90/p99/max latency in ms from each request's due time (and the p99
    of each tenth of the run, in due order), errors
    (non-2xx answers and failed requests, by status or exception name) and
    how many sends started more than LATE_MS late."""
    target = urlsplit(url)
    path = (target.path or "/") + (f"?{target.query}" if target.query else "")
    method = "POST" if body else "GET"
    total = int(rate * seconds)
    lock = threading.Lock()
    go = threading.Event()
    claimed = 0
    start = 0.0
    latencies, sends, answers = [], [], []
    errors = Counter()

    def worker():
        nonlocal claimed
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=timeout)
        go.wait()
        try:
            while True:
                with lock:
                    index, claimed = claimed, claimed + 1
                if index >= total:
                    return
                payload = body(index) if body else None
                due = start + index / rate
                time.sleep(max(0.0, due - time.monotonic()))
                sent = time.monotonic()
                try:
                    connection.request(method, path, body=payload, headers=headers or {})
                    response = connection.getresponse()
                    response.read()
                    error = None if 200 <= response.status < 300 else str(response.status)
                except (OSError, http.client.HTTPException) as exc:
                    error = type(exc).__name__
                    connection.close()  # the next request opens a fresh connection
                answered = time.monotonic()
                with lock:
                    latencies.append((index, (answered - due) * 1000))
                    sends.append((sent, sent - due))
                    answers.append(answered)
                    if error:
                        errors[error] += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(max_in_flight, total))]
    for thread in threads:
        thread.start()
    start = time.monotonic() + 0.05  # every worker is waiting on `go` before the first request is due
    go.set()
    for thread in threads:
        thread.join()
    tenths = [[] for _ in range(10)]  # by due time: when in the run the slow requests were
    for index, ms in latencies:
        tenths[index * 10 // total].append(ms)
    latencies = sorted(ms for _index, ms in latencies)
    last_send = max((sent for sent, _late in sends), default=start)
    span = (max(answers) - start) if answers else 0.0
    return {
        "offered_rate": rate,
        "seconds": seconds,
        "requests": total,
        # Sends over the time from the first due to the last send, one interval longer.
        "sent_rate": round(total / (last_send - start + 1 / rate), 1) if total else 0.0,
        "achieved_rate": round(len(answers) / span, 1) if span else 0.0,
        "p50_ms": round(percentile(latencies, 50), 1),
        "p90_ms": round(percentile(latencies, 90), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "max_ms": round(latencies[-1], 1) if latencies else 0.0,
        "p99_ms_by_tenth": [round(percentile(sorted(tenth), 99), 1) for tenth in tenths],
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors),
        "late_sends": sum(1 for _sent, late in sends if late * 1000 > LATE_MS),
        "max_in_flight": max_in_flight,
    }
