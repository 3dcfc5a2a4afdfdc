#!/usr/bin/env python3
"""The hand-written alternative ecom-pulse is compared with: a straightforward Python consumer
(confluent-kafka + prometheus_client) doing the same job on the same topics — decode and
validate, de-duplicate by event id, rolling 5m/1h/24h windows of 60 buckets per
(campaign, channel), counters, and KPI gauges computed at scrape time.

    python3 bench/baseline.py BROKERS GROUP EVENTS [METRICS_PORT]

Stops after EVENTS messages and prints JSON: events, wall time from the first message to the
last, process CPU time over the same span.
"""
import json
import sys
import time
from collections import defaultdict
from datetime import datetime

from confluent_kafka import Consumer
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, REGISTRY

WINDOWS = [("5m", 300_000), ("1h", 3_600_000), ("24h", 86_400_000)]
BUCKETS = 60
RATES = {"USD": 1.0, "EUR": 1.08}
DEDUP_MS = 15 * 60_000
CLV_FACTOR = 4.0 * 3.0

# (campaign, channel) -> per window {bucket: [visits, orders, new, gmv, spend]}
windows = defaultdict(lambda: [defaultdict(lambda: [0, 0, 0, 0.0, 0.0]) for _ in WINDOWS])
totals = defaultdict(lambda: [0, 0, 0, 0.0, 0.0])
seen = {}
rejected = defaultdict(int)


def parse_ts(value, fallback):
    if value is None:
        return fallback
    if isinstance(value, int):
        return value
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


def apply(raw, record_ts, now):
    try:
        e = json.loads(raw)
        kind = e["type"]
        if kind not in ("visit", "order", "ad_spend"):
            rejected["unknown_type"] += 1
            return
        event_id = e["event_id"]
        ts = parse_ts(e.get("timestamp"), record_ts)
        amount = 0.0
        if kind != "visit":
            amount = float(e["amount"]) * RATES[e.get("currency") or "USD"]
    except (ValueError, KeyError, TypeError):
        rejected["invalid"] += 1
        return
    if ts < now - 86_400_000:
        rejected["too_late"] += 1
        return
    key = (kind, event_id)
    if key in seen:
        return
    seen[key] = ts
    cell = [0, 0, 0, 0.0, 0.0]
    if kind == "visit":
        cell[0] = 1
    elif kind == "order":
        cell[1], cell[2], cell[3] = 1, int(bool(e.get("new_customer"))), amount
    else:
        cell[4] = amount
    k = (e.get("campaign") or "(none)", e.get("channel") or "(none)")
    t = totals[k]
    for i in range(5):
        t[i] += cell[i]
    for w, (_, length) in enumerate(WINDOWS):
        b = windows[k][w][ts // (length // BUCKETS)]
        for i in range(5):
            b[i] += cell[i]


def prune(now):
    for key, ts in list(seen.items()):
        if ts < now - DEDUP_MS:
            del seen[key]
    for rings in windows.values():
        for w, (_, length) in enumerate(WINDOWS):
            width = length // BUCKETS
            oldest = now // width - BUCKETS
            for b in [b for b in rings[w] if b <= oldest]:
                del rings[w][b]


class KpiCollector:
    def collect(self):
        now = int(time.time() * 1000)
        labels = ["campaign", "channel", "window"]
        g = {n: GaugeMetricFamily(f"ecom_{n}", n, labels=labels)
             for n in ["visits", "orders", "new_customers", "gmv", "ad_spend", "cvr_ratio", "aov", "cac", "clv", "roas_ratio", "clv_cac_ratio"]}
        for (campaign, channel), rings in list(windows.items()):
            for w, (label, length) in enumerate(WINDOWS):
                width = length // BUCKETS
                lo = now // width - BUCKETS
                v = o = n = gmv = spend = 0
                for b, c in list(rings[w].items()):
                    if b > lo:
                        v += c[0]; o += c[1]; n += c[2]; gmv += c[3]; spend += c[4]
                lv = [campaign, channel, label]
                for name, value in [("visits", v), ("orders", o), ("new_customers", n), ("gmv", gmv), ("ad_spend", spend)]:
                    g[name].add_metric(lv, value)
                if v: g["cvr_ratio"].add_metric(lv, o / v)
                if o: g["aov"].add_metric(lv, gmv / o); g["clv"].add_metric(lv, gmv / o * CLV_FACTOR)
                if n: g["cac"].add_metric(lv, spend / n)
                if spend: g["roas_ratio"].add_metric(lv, gmv / spend)
                if n and o and spend: g["clv_cac_ratio"].add_metric(lv, (gmv / o * CLV_FACTOR) / (spend / n))
        yield from g.values()
        c = CounterMetricFamily("ecom_visits", "visits", labels=["campaign", "channel"])
        for (campaign, channel), t in list(totals.items()):
            c.add_metric([campaign, channel], t[0])
        yield c


def main():
    brokers, group, events = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if len(sys.argv) > 4:
        REGISTRY.register(KpiCollector())
        start_http_server(int(sys.argv[4]))
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": True})
    consumer.subscribe(["visits", "orders", "ad-spend"])
    count = 0
    start = None
    last_prune = 0
    while count < events:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        if start is None:
            start = (time.monotonic(), time.process_time())
        now = int(time.time() * 1000)
        apply(msg.value(), msg.timestamp()[1], now)
        count += 1
        if now - last_prune > 10_000:
            prune(now)
            last_prune = now
    wall = time.monotonic() - start[0]
    cpu = time.process_time() - start[1]
    consumer.close()
    print(json.dumps({"events": count, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}))


if __name__ == "__main__":
    main()
