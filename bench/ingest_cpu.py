#!/usr/bin/env python3
"""CPU per event, A/B: the count-only floor and several builds of ecom-pulse in alternating rounds
on one filled topic set.

    python3 bench/ingest_cpu.py tansu|mock EVENTS PARTITIONS ROUNDS NAME=BINARY ...

Fills the broker once (EVENTS over 1,000 keys, as bench/run.sh does), then in each round runs the
floor (the count-only consumer with ecom-pulse's tuning) and each build in its own group, and
prints every run's CPU per event and ratio to that round's floor, then the medians. On this VM one
build's CPU per event moves by +-15 % from run to run, so compare builds only within one such run,
and run it again with the builds in the reverse order: within a round, later runs may find the
broker's caches warmer. Needs what bench/run.sh builds.
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (bench/run.py: broker, filling, the floor, the service's process)


def main():
    kind, events, partitions, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    builds = [a.split("=", 1) for a in sys.argv[5:]]
    suffix = str(int(time.time()))
    broker = run.Broker(kind, partitions, [f"g{r}-{n}-{suffix}" for r in range(rounds) for n, _ in builds])
    cpu = {n: [] for n in ["floor", *(n for n, _ in builds)]}
    try:
        run.fill(broker.brokers, events, 1000, 60, "ab" + suffix)
        for r in range(rounds):
            floor = run.run_count(broker.brokers, f"floor{r}-{suffix}", events, True)
            cpu["floor"].append(floor["cpu_s"] / events * 1e6)
            line = [f"floor {cpu['floor'][-1]:.3f}"]
            for name, binary in builds:
                run.ECOM = binary
                e = run.Ecom(broker.brokers, f"g{r}-{name}-{suffix}", run.MOCK_EXTRA if kind == "mock" else "")
                m = e.consume(events)
                e.stop()
                cpu[name].append(m["cpu_s"] / events * 1e6)
                line.append(f"{name} {cpu[name][-1]:.3f} ({cpu[name][-1] / cpu['floor'][-1]:.2f} x, wall {m['wall_s']:.2f} s)")
            print(" | ".join(line), flush=True)
    finally:
        broker.stop()
    for name, _ in builds:
        ratios = [x / f for x, f in zip(cpu[name], cpu["floor"])]
        print(f"{name}: median {statistics.median(cpu[name]):.3f} µs per event, median ratio to the floor "
              f"{statistics.median(ratios):.2f} x ({', '.join(f'{x:.2f}' for x in ratios)})")


if __name__ == "__main__":
    main()
