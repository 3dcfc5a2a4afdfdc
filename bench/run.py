#!/usr/bin/env python3
"""End-to-end performance of ecom-pulse, measured side by side with its floor and its
hand-written alternative, in one run. Called by bench/run.sh (which builds first).

For each broker (Tansu with SQLite storage; librdkafka's mock cluster with many partitions):
  1. fill the three topics with the synthetic load (bench_fill);
  2. consume it with the count-only librdkafka consumer (count_consumer): the floor;
  3. consume it with ecom-pulse (decode, validate, dedup, windows, KPIs, checkpoints);
  4. consume it with the Python baseline (bench/baseline.py).
Each gets its own consumer group. Wall time runs from the first event to the last; CPU is
user + system time of the consuming process over that span (from /proc).

Then, on the mock cluster with 10,000 keys: /metrics latency while ingestion runs at full
speed, ingestion with and without scraping, restore time after a restart, and RSS.
"""
import argparse
import http.client as httpclient
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
# ECOM_BIN: another build of the service, for A/B runs against an older commit.
ECOM = os.environ.get("ECOM_BIN") or os.path.join(REL, "ecom-pulse")
EX = os.path.join(REL, "examples")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait(what, check, timeout=120, every=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


def http(port, path, timeout=10):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError:
        return None, ""


class Probe:
    """GET on one kept-alive connection. The service pays for each probe; a new TCP
    connection per probe (urllib) cost it 0.067 ms of CPU, a kept-alive one 0.030 ms: over a
    21 s run probed every 50 ms, 28 against 13 ms that the count-only floor, never probed,
    does not pay."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def status(self, path):
        for _ in range(2):
            try:
                if self.conn is None:
                    self.conn = httpclient.HTTPConnection("127.0.0.1", self.port, timeout=10)
                self.conn.request("GET", path)
                r = self.conn.getresponse()
                r.read()
                return r.status
            except (OSError, httpclient.HTTPException):
                self.close()
        return None

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# librdkafka's mock cluster holds a departed member's partitions for its whole session
# timeout (45 s by default) before a restarted instance gets them: shorten it for the mock.
MOCK_EXTRA = '[kafka.properties]\n"session.timeout.ms" = "6000"\n'


def curl_ms(port):
    """One scrape of /metrics, timed by curl from request to last byte."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{time_total}",
                          f"http://127.0.0.1:{port}/metrics"], capture_output=True, text=True, check=True)
    return float(out.stdout) * 1000


def scrape_cost(proc, port, scrapes=50):
    """Back-to-back scrapes: curl's time for each, and the service's CPU per scrape in ms."""
    c = cpu_seconds(proc.pid)
    latencies = [curl_ms(port) for _ in range(scrapes)]
    return latencies, (cpu_seconds(proc.pid) - c) / scrapes * 1000


def metric_sum(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Broker:
    def __init__(self, kind, partitions, groups):
        self.kind = kind
        self.dir = tempfile.mkdtemp(prefix=f"bench-{kind}-")
        if kind == "tansu":
            port = free_port()
            url = f"tcp://127.0.0.1:{port}"
            self.proc = subprocess.Popen(
                ["tansu", "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "sqlite://tansu.db"],
                cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
            self.brokers = f"127.0.0.1:{port}"
            wait("tansu", lambda: self._up(port))
            for t in ["visits", "orders", "ad-spend"]:
                subprocess.run(["tansu", "topic", "create", t, "--partitions", str(partitions), "--broker", url],
                               check=True, stdout=subprocess.DEVNULL)
        else:
            self.proc = subprocess.Popen([os.path.join(EX, "mock_broker"), str(partitions), *groups],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.brokers = self.proc.stdout.readline().strip()

    @staticmethod
    def _up(port):
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return True
        except OSError:
            return False

    def stop(self):
        if self.kind == "mock":
            self.proc.stdin.close()
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def fill(brokers, events, keys, spread_minutes, tag):
    t = time.monotonic()
    subprocess.run([os.path.join(EX, "bench_fill"), brokers, str(events), str(keys), str(spread_minutes), tag],
                   check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t


# ecom-pulse's own librdkafka tuning (src/source/mod.rs), given to the floor as well so the two
# read the topics the same way.
TUNING = ["fetch.queue.backoff.ms=10"]


def run_count(brokers, group, events, tuned):
    out = subprocess.run([os.path.join(EX, "count_consumer"), brokers, group, str(events), *(TUNING if tuned else [])],
                         check=True, capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout)


def run_python(brokers, group, events):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "baseline.py"), brokers, group, str(events)],
                         check=True, capture_output=True, text=True, timeout=1200)
    return json.loads(out.stdout.strip().splitlines()[-1])


class Ecom:
    """The ecom-pulse binary on its own config and port."""

    def __init__(self, brokers, group, extra=""):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="bench-ecom-")
        config = os.path.join(self.dir, "config.toml")
        with open(config, "w") as f:
            f.write(f'[kafka]\nbrokers = "{brokers}"\ngroup_id = "{group}"\n'
                    f'[http]\nlisten = "127.0.0.1:{self.port}"\n[log]\nlevel = "warn"\n{extra}')
        self.log = open(os.path.join(self.dir, "log"), "w")
        self.proc = subprocess.Popen([ECOM, "--config", config], stdout=subprocess.DEVNULL, stderr=self.log)
        wait("ecom-pulse to serve", lambda: http(self.port, "/healthz")[0] == 200)

    def seen(self):
        status, text = http(self.port, "/metrics")
        if status != 200:
            return None, ""
        return (metric_sum(text, "ecom_pulse_events_total") + metric_sum(text, "ecom_pulse_events_rejected_total")
                + metric_sum(text, "ecom_pulse_events_duplicate_total")), text

    def consume(self, events):
        """Wall and CPU from the first event to the last. The topics are filled before start,
        so /readyz turns 200 exactly when every partition reached the end it had when
        assigned: a cheap probe, unlike /metrics, whose rendering would bill the run."""
        # Probes cost the service CPU too (HTTP on its workers): keep them sparse.
        start = wait("the first event", lambda: (self.seen()[0] or 0) > 0 and (time.monotonic(), cpu_seconds(self.proc.pid)),
                     timeout=300, every=0.02)
        probe = Probe(self.port)
        wait("every event", lambda: probe.status("/readyz") == 200, timeout=600, every=0.05)
        end = (time.monotonic(), cpu_seconds(self.proc.pid))
        probe.close()
        seen = self.seen()[0]
        if seen != events:
            raise SystemExit(f"ecom-pulse saw {seen} events, expected {events}")
        return {"events": events, "wall_s": round(end[0] - start[0], 3), "cpu_s": round(end[1] - start[1], 3)}

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)
        self.log.close()


def row(name, r, floor=None):
    thr = r["events"] / r["wall_s"] if r["wall_s"] > 0 else float("inf")
    cpu_us = r["cpu_s"] / r["events"] * 1e6
    s = f"| {name:42} | {thr:12,.0f} | {cpu_us:8.3f} |"
    if floor:
        fthr = floor["events"] / floor["wall_s"]
        fcpu = floor["cpu_s"] / floor["events"] * 1e6
        s += f" {thr / fthr:6.2f} x | {cpu_us / fcpu:6.2f} x | {cpu_us - fcpu:7.3f} |"
    else:
        s += "        |          |         |"
    return s, thr, cpu_us


def median_run(runs):
    """The median wall time and the median CPU time of several runs of one consumer."""
    return {"events": runs[0]["events"],
            "wall_s": statistics.median(r["wall_s"] for r in runs),
            "cpu_s": statistics.median(r["cpu_s"] for r in runs)}


def compare(broker_kind, partitions, events, keys, out, pairs=3):
    """The floor and ecom-pulse alternately, `pairs` times each (on this VM one build's CPU
    per event moves by ±15 % from one run to the next), then the other two consumers once."""
    suffix = str(int(time.time()))
    groups = {k: f"{k}-{broker_kind}-{suffix}" for k in ["count", "py"]}
    tuned_groups = [f"tuned{i}-{broker_kind}-{suffix}" for i in range(pairs)]
    ecom_groups = [f"ecom{i}-{broker_kind}-{suffix}" for i in range(pairs)]
    broker = Broker(broker_kind, partitions, ecom_groups)
    try:
        fill_s = fill(broker.brokers, events, keys, 60, "c" + suffix)
        count = run_count(broker.brokers, groups["count"], events, tuned=False)
        floors, mine, rss = [], [], []
        for i in range(pairs):
            floors.append(run_count(broker.brokers, tuned_groups[i], events, tuned=True))
            ecom = Ecom(broker.brokers, ecom_groups[i])
            mine.append(ecom.consume(events))
            rss.append(rss_bytes(ecom.proc.pid))
            ecom.stop()
        py = run_python(broker.brokers, groups["py"], events)
    finally:
        broker.stop()
    tuned, ours = median_run(floors), median_run(mine)
    out.append(f"\n{broker_kind}: {events:,} events over {keys:,} keys, {partitions} partitions per topic "
               f"(filled in {fill_s:.1f} s); floor and ecom-pulse: medians of {pairs} alternating runs")
    out.append("")
    out.append("| consumer | events/s (wall) | CPU µs/event | wall vs floor | CPU vs floor | own work µs/event |")
    out.append("|---|---|---|---|---|---|")
    line, _, _ = row("count-only, librdkafka defaults", count)
    out.append(line)
    line, _, fcpu = row("count-only, ecom-pulse's tuning (floor)", tuned)
    out.append(line)
    line, ethr, ecpu = row("ecom-pulse", ours, tuned)
    out.append(line)
    line, _, pcpu = row("Python baseline (librdkafka defaults)", py, tuned)
    out.append(line)
    own_e, own_p = ecpu - fcpu, pcpu - fcpu
    each = ", ".join(f"{m['cpu_s'] / f['cpu_s']:.2f}" for f, m in zip(floors, mine))
    walls = ", ".join(f"{f['wall_s'] / m['wall_s']:.2f}" for f, m in zip(floors, mine))
    out.append(f"\nIn each pair, CPU vs floor: {each} x; wall throughput vs floor: {walls} x.")
    out.append(f"ecom-pulse's own work is {own_e / own_p:.3f} of the Python consumer's own work "
               f"({own_e:.3f} vs {own_p:.3f} µs/event); RSS at the end {statistics.median(rss) / 2**20:.0f} MiB.")


def scrapes(events, keys, out, repeat=3):
    """Scrape latency and its cost to ingestion, and restore time, on the mock cluster."""
    suffix = str(int(time.time()))
    quiet = [f"quiet-{i}-{suffix}" for i in range(repeat)]
    busy = [f"busy-{i}-{suffix}" for i in range(repeat)]
    broker = Broker("mock", 96, quiet + busy)
    try:
        fill(broker.brokers, events, keys, 60, "s" + suffix)
        # Alone and scraped, alternately, each in a group of its own on the same topics: one
        # ingestion of a million events takes about a second here, and the hour's noise on
        # this VM is larger than the effect measured, so medians of several pairs.
        alone, scraped, latencies = [], [], []
        for i in range(repeat):
            # Ingestion alone (its end probed on /readyz).
            e = Ecom(broker.brokers, quiet[i], MOCK_EXTRA)
            alone.append(e.consume(events)["wall_s"])
            e.stop()
            # Ingestion while /metrics is scraped back to back by curl (a C client, so the
            # scraper's own CPU stays small on this 2-core machine); the end is seen on /readyz.
            e = Ecom(broker.brokers, busy[i], MOCK_EXTRA)
            wait("the first event", lambda: (e.seen()[0] or 0) > 0, every=0.01)
            t0 = time.monotonic()
            while http(e.port, "/readyz")[0] != 200:
                latencies.append(curl_ms(e.port))
            scraped.append(time.monotonic() - t0)
            if i < repeat - 1:
                e.stop()
        seen, text = e.seen()
        keys_seen = metric_sum(text, "ecom_pulse_tracked_keys")
        # Steady state after ingestion: every key in every window; CPU per scrape.
        full, render_cpu_ms = scrape_cost(e.proc, e.port)
        exposition = len(http(e.port, "/metrics")[1])
        series = sum(1 for line in text.splitlines() if line.startswith("ecom_visits{"))
        rss = rss_bytes(e.proc.pid)
        # Restore: stop (final checkpoint), start again in the same group, time to ready.
        e.stop()
        t = time.monotonic()
        r = Ecom(broker.brokers, busy[-1], MOCK_EXTRA)
        # /readyz says which phase it is in: waiting for the group (on the mock, until the old
        # member's session times out), restoring, catching up, ready.
        assigned = None
        while True:
            status, why = http(r.port, "/readyz")
            now = time.monotonic()
            if assigned is None and status is not None and "not connected" not in why \
                    and "waiting for a partition assignment" not in why:
                assigned = now
            if status == 200:
                break
            if now - t > 300:
                raise SystemExit("no readiness after restore")
            time.sleep(0.02)
        restore_s = now - t
        restore_own_s = now - assigned
        status, text = http(r.port, "/metrics")
        restored = metric_sum(text, "ecom_visits_total")
        r.stop()
    finally:
        broker.stop()
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    qf = statistics.quantiles(full, n=100, method="inclusive")
    slow = (statistics.median(scraped) / statistics.median(alone) - 1) * 100
    pairs = ", ".join(f"{(b / a - 1) * 100:+.1f} %" for a, b in zip(alone, scraped))
    out.append(f"\nmock cluster, {events:,} events over {keys:,} keys (tracked {keys_seen:,.0f}; "
               f"{series:,} ecom_visits series = keys x windows):\n")
    out.append(f"- /metrics while ingesting at full speed: {len(latencies)} scrapes, p50 {q[49]:.1f} ms, "
               f"p99 {q[98]:.1f} ms, max {max(latencies):.1f} ms")
    out.append(f"- /metrics after ingestion, every key in every window ({exposition / 2**20:.0f} MiB of text): "
               f"p50 {qf[49]:.1f} ms, p99 {qf[98]:.1f} ms, {render_cpu_ms:.0f} ms of service CPU per scrape "
               f"({render_cpu_ms / 15000 * 100:.2f} % of a core at a 15 s scrape interval, "
               f"{render_cpu_ms / 1000 * 100:.1f} % at 1 s)")
    out.append(f"- ingestion, {repeat} times each, alternately: alone {' / '.join(f'{a:.2f}' for a in alone)} s, "
               f"while scraped back to back {' / '.join(f'{b:.2f}' for b in scraped)} s; medians "
               f"{statistics.median(alone):.2f} and {statistics.median(scraped):.2f} s ({slow:+.1f} %; pairs {pairs})")
    out.append(f"- restart with {keys:,} keys and 1 h of state: ready (restored and caught up) {restore_own_s:.2f} s "
               f"after the partitions were assigned, {restore_s:.2f} s after start (the mock hands partitions "
               f"over only when the old member's session times out); visits counted after restore {restored:,.0f}")
    out.append(f"- RSS with {keys:,} keys: {rss / 2**20:.0f} MiB")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tansu-events", type=int, default=1_000_000)
    # The mock silently drops old data (~5 MiB per partition); here 1.4 M events over 96
    # partitions were all kept, 1.5 M were not.
    p.add_argument("--mock-events", type=int, default=1_000_000)
    p.add_argument("--mock-partitions", type=int, default=96)
    p.add_argument("--keys", type=int, default=1_000)
    p.add_argument("--scrape-events", type=int, default=1_000_000)
    p.add_argument("--scrape-keys", type=int, default=10_000)
    p.add_argument("--skip", action="append", default=[], help="tansu, mock or scrapes")
    args = p.parse_args()
    # CPU time is read from /proc in 10 ms ticks: a run must take many of them to compare.
    for name in ["tansu_events", "mock_events", "scrape_events"]:
        if getattr(args, name) < 100_000:
            p.error(f"--{name.replace('_', '-')} must be at least 100,000 (CPU is read in 10 ms ticks)")
    out = []
    machine = f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    out.append(f"ecom-pulse bench/run.sh, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine}")
    if "tansu" not in args.skip:
        compare("tansu", 6, args.tansu_events, args.keys, out)
    if "mock" not in args.skip:
        compare("mock", args.mock_partitions, args.mock_events, args.keys, out)
    if "scrapes" not in args.skip:
        scrapes(args.scrape_events, args.scrape_keys, out)
    print("\n".join(out))


if __name__ == "__main__":
    main()
