#!/usr/bin/env python3
"""Summarises the criterion results of `cargo bench -p sluice-dataplane --bench pipeline`.

Each measurement is one batch of 1,000 packets, so the batch time in microseconds is the
cost in nanoseconds per packet. Ratios compare large and small tables measured in the
same run (the machine drifts between runs; ratios within a run are what to compare).
"""

import json
import os
import platform
import sys

PATHS = [
    ("bounce", "same-subnet bounce", 30.0),
    ("route", "cross-subnet route", None),
    ("dnat", "service DNAT", 50.0),
    ("arp", "ARP reply", None),
]
FLOWS = 1000
RATIO_TARGET = 1.2


def median_ns(root, group, name):
    path = os.path.join(root, group, name, "new", "estimates.json")
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"] / FLOWS


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    print(f"Pipeline cost per packet (criterion medians, {FLOWS} flows, {cpu}, {os.cpu_count()} cores, {platform.release()})")
    print()
    print("| path | small tables ns/pkt | large tables ns/pkt | large/small | target |")
    print("|---|---|---|---|---|")
    for group, label, target in PATHS:
        try:
            small = median_ns(root, group, "small")
            large = median_ns(root, group, "large")
        except (OSError, KeyError):
            print(f"| {label} | not measured | | | |")
            continue
        ratio = large / small
        goal = []
        if target is not None:
            goal.append(f"<= {target:.0f} ns at large: {'met' if large <= target else 'missed by %.1fx' % (large / target)}")
        goal.append(f"ratio <= {RATIO_TARGET}: {'met' if ratio <= RATIO_TARGET else 'missed'}")
        print(f"| {label} | {small:.1f} | {large:.1f} | {ratio:.2f} | {'; '.join(goal)} |")


if __name__ == "__main__":
    main()
