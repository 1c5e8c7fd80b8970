#!/usr/bin/env python3
"""Self time per operator from a trace written by `noprop_bench --profile FILE`.

usage: bench/profile-summary.py FILE [ROWS]
"""
import collections
import json
import sys


def main():
    events = json.load(open(sys.argv[1]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    spans = sorted((e for e in events if e.get("ph") == "X"), key=lambda e: (e.get("tid"), e["ts"], -e["dur"]))
    # Self time: an event's duration less that of the events nested directly inside it (same thread).
    self_time = collections.Counter()
    calls = collections.Counter()
    stack = []
    for e in spans:
        while stack and stack[-1][0]["ts"] + stack[-1][0]["dur"] <= e["ts"] or (stack and stack[-1][0].get("tid") != e.get("tid")):
            stack.pop()
        if stack:
            self_time[stack[-1][0]["name"]] -= e["dur"]
        self_time[e["name"]] += e["dur"]
        calls[e["name"]] += 1
        stack.append((e,))
    total = sum(self_time.values())
    print(f"{'operator':48s} {'self ms':>10s} {'%':>6s} {'calls':>7s}")
    for name, us in self_time.most_common(rows):
        print(f"{name[:48]:48s} {us / 1000:10.1f} {100 * us / total:6.1f} {calls[name]:7d}")
    print(f"{'total':48s} {total / 1000:10.1f}")


if __name__ == "__main__":
    main()
