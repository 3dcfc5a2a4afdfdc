#!/usr/bin/env python3
"""Service CPU per /metrics scrape, A/B: several builds in alternating rounds on one filled topic set.

    python3 bench/scrape_cpu.py ROUNDS [--perf] NAME=BINARY ...

Fills librdkafka's mock cluster with 1,000,000 events over 10,000 keys (as bench/run.sh's scrape
section does), then for each round and build: starts the build in a group of its own, waits until
it has read every event, and measures 50 back-to-back scrapes (curl) after ingestion: the
service's CPU (user + sys) per scrape, its minor page faults per scrape and curl's median time.
With --perf, the last round of each build is recorded with `perf record -g` into
/tmp/scrape-NAME.data. Needs the release examples (cargo build --release --examples).
"""
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (bench/run.py: broker, filling, the service's process)


def minor_faults(pid):
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[7])


def main():
    rounds = int(sys.argv[1])
    perf = "--perf" in sys.argv
    builds = [a.split("=", 1) for a in sys.argv[2:] if "=" in a]
    events, keys, scrapes = 1_000_000, 10_000, 50
    broker = run.Broker("mock", 96, [f"g-{n}-{i}" for i in range(rounds) for n, _ in builds])
    cpu = {n: [] for n, _ in builds}
    try:
        run.fill(broker.brokers, events, keys, 60, f"a{int(time.time())}")
        for i in range(rounds):
            for name, binary in builds:
                run.ECOM = binary
                e = run.Ecom(broker.brokers, f"g-{name}-{i}")
                e.consume(events)
                for _ in range(5):  # warm: the first scrapes size buffers and fault pages in
                    run.curl_ms(e.port)
                rec = None
                if perf and i == rounds - 1:
                    rec = subprocess.Popen(["perf", "record", "-F", "2000", "-g", "-o", f"/tmp/scrape-{name}.data",
                                            "-p", str(e.proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(1)
                f0 = minor_faults(e.proc.pid)
                latencies, per_scrape = run.scrape_cost(e.proc, e.port, scrapes)
                faults = (minor_faults(e.proc.pid) - f0) / scrapes
                if rec:
                    rec.send_signal(2)
                    rec.wait()
                cpu[name].append(per_scrape)
                print(f"round {i} {name}: {per_scrape:.1f} ms CPU per scrape, {faults:.0f} faults per scrape, "
                      f"p50 {statistics.median(latencies):.1f} ms", flush=True)
                e.stop()
    finally:
        broker.stop()
    for name, values in cpu.items():
        print(f"{name}: median {statistics.median(values):.1f} ms CPU per scrape "
              f"({' / '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
