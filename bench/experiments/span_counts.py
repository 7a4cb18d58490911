"""Which part sends which spans: a traced system's spans by service and name for creates at a fixed rate.

    .venv/bin/python -m bench.experiments.span_counts [--rate 100] [--seconds 10]

Starts the system on a fresh PostgreSQL database with tracing at 10 %
sampling (observability_cost's setting), its spans going to a collector in
this process that counts them by service and span name; offers creates at
`--rate` per second for `--seconds` (open loop, after a short warm-up) and
prints the counts of the spans that arrived meanwhile, most first. A span
costs its part tens of microseconds to make and export, so a part that sends
many more spans than there are sampled creates is where tracing's cost is.
"""

import argparse
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from .. import figures, open_loop
from .observability_cost import otlp_collector, settings, system_on_fresh_database

TRACED = "metrics + tracing 10 %"
SETTLE_SECONDS = 8  # for the consumers' batches and the exporters' next flush (5 s)


class CountingCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """Counts the spans of every export by (service.name, span name)."""

    def __init__(self):
        self.counts = Counter()
        self.lock = threading.Lock()

    def Export(self, request, context):
        counted = Counter()
        for resource_spans in request.resource_spans:
            service = next(
                (
                    attribute.value.string_value
                    for attribute in resource_spans.resource.attributes
                    if attribute.key == "service.name"
                ),
                "?",
            )
            for scope_spans in resource_spans.scope_spans:
                counted.update((service, span.name) for span in scope_spans.spans)
        with self.lock:
            self.counts.update(counted)
        return trace_service_pb2.ExportTraceServiceResponse()

    def take(self):
        """The counts so far, starting again from zero."""
        with self.lock:
            counts, self.counts = self.counts, Counter()
        return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=100, help="creates per second")
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        collector, endpoint = stack.enter_context(otlp_collector(CountingCollector()))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        running = stack.enter_context(system_on_fresh_database(work, settings(endpoint)[TRACED]))
        headers = {"Authorization": f"Bearer {running.token()}", "Content-Type": "application/json"}
        url = f"{running.url}/api/patients"
        open_loop.run(url, args.rate, 3, figures.create_body("spans-w"), headers)
        time.sleep(SETTLE_SECONDS)
        collector.take()
        result = open_loop.run(url, args.rate, args.seconds, figures.create_body("spans-m"), headers)
        time.sleep(SETTLE_SECONDS)
        counts = collector.take()
    print(f"{result['requests']} creates at {args.rate}/s; spans received, by service and name:")
    for (service, name), count in counts.most_common():
        print(f"{count:7d}  {service:<20} {name}")


if __name__ == "__main__":
    main()
