"""CPU and context switches per unary gRPC call, with our GRPC_EXPERIMENTS and with grpc's defaults.

    .venv/bin/python -m bench.experiments.grpc_call_cost [--calls 3000] [--threads 8] [--rounds 3]

Each round runs bench.grpc_call once per setting, in fresh processes (grpc
reads GRPC_EXPERIMENTS when it is imported), and prints its figures; then the
medians of each setting.
"""

import argparse
import json
import statistics

from stack.parts import GRPC_EXPERIMENTS

from ..grpc_call import measure_in_subprocess

SETTINGS = {"ours": GRPC_EXPERIMENTS, "grpc defaults": ""}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    runs = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, experiments in SETTINGS.items():
            runs[name].append(measure_in_subprocess(experiments, args.calls, args.threads))
            print(f"{name:<14} {runs[name][-1]}")
    print("medians:")
    for name, figures in runs.items():
        print(
            f"{name:<14} "
            + json.dumps({key: statistics.median(run[key] for run in figures) for key in figures[0]})
        )


if __name__ == "__main__":
    main()
