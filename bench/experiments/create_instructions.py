"""Instructions per create, counted by valgrind: an A/B that the machine's load does not blur.

    .venv/bin/python -m bench.experiments.create_instructions [--creates 500] [--traceparent unsampled]

Runs `create_cost` under callgrind twice, with 50 and with 50 + --creates
creates, and divides the difference of each process's instruction count by
--creates: what a create costs the patient app (this side, in process) and
the billing server (its subprocess), start-up and warm-up left out.
Instructions are not seconds, but for the same code they are the same from
run to run whatever else the machine does (two runs of the same code differ
by well under 1 %), where CPU seconds under load spread by 10-30 %: this
tells a change of a few percent apart. `--traceparent` and
OTEL_EXPORTER_OTLP_ENDPOINT are create_cost's (the spans of sampled creates
go to that endpoint). Needs valgrind (`apt-get install valgrind`); each run
takes a few minutes.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from stack.config import ROOT

BASE_CREATES = 50
PARTS = {"patient": "bench.experiments.create_cost", "billing": "-m billing"}


def instructions_by_part(creates, create_cost_args, out_dir):
    """Each part's instructions over a whole create_cost run of `creates`
    creates, summed over its processes (billing's forked migration included)."""
    run_dir = out_dir / str(creates)
    run_dir.mkdir()
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={run_dir}/callgrind.%p",
            "--trace-children=yes",
            sys.executable,
            "-m",
            "bench.experiments.create_cost",
            "--creates",
            str(creates),
            *create_cost_args,
        ],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    totals = Counter()
    for profile in run_dir.glob("callgrind.*"):
        text = profile.read_text(errors="replace")
        command = re.search(r"^cmd: (.*)$", text, re.MULTILINE)
        summary = re.search(r"^summary: (\d+)$", text, re.MULTILINE)
        if command is None or summary is None:
            continue
        for part, marker in PARTS.items():
            if marker in command.group(1):
                totals[part] += int(summary.group(1))
    return totals


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=500)
    parser.add_argument("--traceparent", choices=["none", "unsampled", "sampled"], default="none")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        sys.exit("needs valgrind: apt-get install valgrind")
    out_dir = Path(tempfile.mkdtemp(prefix="pms-create-instructions-"))
    try:
        create_cost_args = ["--traceparent", args.traceparent]
        few = instructions_by_part(BASE_CREATES, create_cost_args, out_dir)
        more = instructions_by_part(BASE_CREATES + args.creates, create_cost_args, out_dir)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    traced = "traced" if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "untraced"
    print(f"instructions per create ({traced}, traceparent {args.traceparent}, {args.creates} creates):")
    for part in PARTS:
        print(f"  {part}: {(more[part] - few[part]) / args.creates / 1e6:.3f} M")


if __name__ == "__main__":
    main()
