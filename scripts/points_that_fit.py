#!/usr/bin/env python3
"""Read `decodelab check` on stdin; print an --only filter of the points whose device memory
fits MIB mebibytes with 10 % to spare ("all" when every point fits), for device-perf.sh.

    decodelab check FILE --backend cuda | python3 scripts/points_that_fit.py 81559
"""
import re
import sys

UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def size(text):
    m = re.fullmatch(r"([0-9.]+)([KMGT]?i?B)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def main():
    limit = float(sys.argv[1]) * (1 << 20) * 0.9
    fit, total = [], 0
    for line in sys.stdin:
        cols = line.split()
        if not cols or not cols[0].isdigit():
            continue
        # The device-memory column: the second size from the end (host memory is last).
        sizes = [size(c) for c in cols if size(c) is not None]
        if len(sizes) < 2:
            continue
        total += 1
        if sizes[-2] <= limit:
            fit.append(cols[0])
    print("all" if len(fit) == total else ",".join(fit))


if __name__ == "__main__":
    main()
