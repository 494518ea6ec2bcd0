"""`python -m fuzzing [SECONDS] [NAME ...]`: each harness (or the named ones) for SECONDS (60).

Ends with one line per harness (`fuzz NAME: N examples in S s, ok` or `..., FAILED (seed N): ...`)
after the failures' shrunk examples and tracebacks; exits 1 if any harness failed. A failure's
shrunk input is printed whole (`Failing test case: ...`): it becomes the regression test.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from fuzzing import harnesses
from fuzzing.driver import Result, run


def main(argv: list[str] | None = None) -> int:
    known = {h.name: h for h in harnesses()}
    parser = argparse.ArgumentParser(prog="./dev fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("seconds", nargs="?", type=float, default=60.0, help="per harness (default 60)")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"harnesses to run: {', '.join(known)}")
    parser.add_argument("--seed", type=int, help="the first seed (default: a fresh one)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in known]
    if unknown or args.seconds <= 0:
        parser.error(f"unknown harness {unknown[0]!r}" if unknown else "seconds must be above zero")
    build = "pure" if os.environ.get("MCP_TUNNEL_PURE", "0") != "0" else "compiled if built"
    print(f"fuzzing {', '.join(args.names or known)} for {args.seconds:g} s each ({build})", flush=True)
    results: list[Result] = []
    for name in args.names or list(known):
        result = run(known[name], seconds=args.seconds, first_seed=args.seed)
        if result.failure is not None:
            print(f"--- {name}: failure (seed {result.seeds[-1]})", file=sys.stderr)
            traceback.print_exception(result.failure, file=sys.stderr)
        results.append(result)
    for result in results:
        print(result.summary())
    return 1 if any(r.failure is not None for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
