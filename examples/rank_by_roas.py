#!/usr/bin/env python3
"""Ranks campaigns by ROAS from ecom-pulse's KPI feed (kafka.kpis_topic).

A budget optimiser's starting point: it reads the feed up to its current end, takes the
newest moment at which the instances' snapshots together cover every input partition (each
instance publishes its own partitions' share, all at the same moments), adds their rows up,
rolls channels up to campaigns by summing GMV and ad spend (never averaging ratios), and
prints campaigns from best to worst ROAS, flagging those under break-even.

    pip install confluent-kafka
    python3 examples/rank_by_roas.py --brokers 127.0.0.1:9092 --topic kpis --window 1h
"""
import argparse
import json

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--brokers", default="127.0.0.1:9092")
    p.add_argument("--topic", default="kpis")
    p.add_argument("--window", default="1h")
    p.add_argument("--break-even", type=float, default=2.0)
    args = p.parse_args()

    consumer = Consumer({"bootstrap.servers": args.brokers, "group.id": "rank-by-roas", "enable.auto.commit": False})
    partitions = consumer.list_topics(args.topic, timeout=10).topics[args.topic].partitions
    # Read every partition from the start up to where it ends now (the feed never stops).
    end = {}
    for p_id in partitions:
        _, high = consumer.get_watermark_offsets(TopicPartition(args.topic, p_id), timeout=10)
        if high > 0:
            end[p_id] = high
    consumer.assign([TopicPartition(args.topic, p_id, OFFSET_BEGINNING) for p_id in end])

    moments = {}  # at -> {"held": {instance: partitions}, "total": n, "rows": [kpi, ...]}
    while end:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        if msg.offset() >= end.get(msg.partition(), 0) - 1:
            end.pop(msg.partition(), None)
        kpi = json.loads(msg.value())
        if kpi.get("schema") != "ecom-pulse.kpi.v1" or kpi["window"] != args.window:
            continue
        m = moments.setdefault(kpi["at"], {"held": {}, "total": 0, "rows": []})
        m["held"][kpi.get("instance", "")] = kpi.get("partitions_held", 0)
        m["total"] = max(m["total"], kpi.get("partitions_total", 0))
        m["rows"].append(kpi)
    consumer.close()
    if not moments:
        return

    # The newest moment whose instances hold every partition between them; else the newest.
    whole = [at for at, m in moments.items() if m["total"] and sum(m["held"].values()) >= m["total"]]
    at = max(whole) if whole else max(moments)
    m = moments[at]
    if at not in whole:
        print(f"partial: the instances at {at} hold {sum(m['held'].values())} of {m['total']} partitions")
    campaigns = {}
    for kpi in m["rows"]:
        c = campaigns.setdefault(kpi["campaign"], {"gmv": 0.0, "ad_spend": 0.0})
        c["gmv"] += kpi["gmv"]
        c["ad_spend"] += kpi["ad_spend"]
    ranked = sorted(
        ((c["gmv"] / c["ad_spend"], name, c) for name, c in campaigns.items() if c["ad_spend"] > 0),
        reverse=True,
    )
    for roas, name, c in ranked:
        flag = "  below break-even" if roas < args.break_even else ""
        print(f"{name:30} ROAS {roas:6.2f}  (GMV {c['gmv']:.2f} on {c['ad_spend']:.2f}){flag}")


if __name__ == "__main__":
    main()
