"""Generates the Python stubs for every .proto in proto/ into pms_common/protos.

The virtual import path `pms_common/protos=proto` makes the generated modules
import each other as `pms_common.protos.*` without touching the .proto files,
so their wire names (no package for BillingService) stay the Java original's.
"""

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
VIRTUAL_PREFIX = "pms_common/protos"


def proto_files():
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_dir: Path) -> None:
    import google.api
    import grpc_tools
    from grpc_tools import protoc

    include_dirs = [
        f"-I{VIRTUAL_PREFIX}={PROTO_DIR}",
        # google/api/annotations.proto ships with googleapis-common-protos.
        f"-I{Path(google.api.__path__[0]).parent.parent}",
        f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
    ]
    args = [
        "protoc",
        *include_dirs,
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed: " + " ".join(args))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT), help="root to write pms_common/protos/* under")
    out = Path(parser.parse_args(argv).out)
    os.makedirs(out / VIRTUAL_PREFIX, exist_ok=True)
    generate(out)


if __name__ == "__main__":
    sys.exit(main())
