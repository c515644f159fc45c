#!/usr/bin/env python3
"""Turns the samples of scripts/bench.sh into perf/results/: a JSON file per run, the
Markdown table (ratios against kernel forwarding and against DPDK) and two PNG plots."""
import argparse
import datetime
import json
import statistics
from collections import defaultdict

LABELS = {
    "kernel": "kernel IPv4 forwarding",
    "xdp": "in-kernel XDP forwarder (bpf_redirect)",
    "dpdk": "DPDK testpmd, AF_XDP PMD (copy mode), mac fwd",
    "dpdk-geneve": "DPDK testpmd, AF_XDP PMD, mac fwd of the gateway's Geneve frames",
}


def label(c):
    if c in LABELS:
        return LABELS[c]
    parts = c.split("-")
    if c.startswith(("ipt-", "nft-")):
        kind = "kube-proxy iptables DNAT" if c.startswith("ipt") else "kube-proxy nftables map"
        mode = "steady flows" if parts[2] == "steady" else "new-flow churn (1M flows, 1 s UDP timeout)"
        return f"{kind}, {int(parts[1]):,} services, {mode}"
    if c.startswith("gw-"):
        d = {p[0]: p[1:] for p in parts[2:] if p[0] in "sef" and p[1:].isdigit()}
        flows = "1M flows (churn)" if "churn" in parts else f"{int(d['f']):,} flows"
        what = "Geneve bounce" if parts[1] == "bounce" else f"service DNAT, {int(d['s']):,} services"
        bp = ", busy polling" if c.endswith("-bp") else ""
        return f"sluice-gateway {what}, {int(d['e']):,} endpoints, {flows}{bp}"
    return c


def main():
    ap = argparse.ArgumentParser()
    for a in ("samples", "busy", "out", "machine", "load_before", "load_after", "command", "notes"):
        ap.add_argument("--" + a.replace("_", "-"), required=True)
    ap.add_argument("--rss-kb", type=int, default=0)
    ap.add_argument("--loss", default=None)
    ap.add_argument("--seconds", type=int, default=0)
    args = ap.parse_args()

    samples = [json.loads(l) for l in open(args.samples) if l.strip()]
    busy = defaultdict(list)
    for line in open(args.busy):
        c, _, b = line.split()
        busy[c].append(float(b))
    order, tput, lat, sent = [], defaultdict(list), {}, defaultdict(list)
    for s in samples:
        c = s["contender"]
        if c not in order:
            order.append(c)
        if s["mode"] == "tput":
            tput[c] += s["sink_windows"]
            if s.get("gen_windows"):
                sent[c] += s["gen_windows"]
        else:
            d = s["sink"].get("delay_us") or {}
            lat[c] = {"p50_us": d.get("p50"), "p99_us": d.get("p99"),
                      "delivered": s["sink"].get("frames"), "sent": s.get("sent")}
    med = {c: statistics.median(tput[c]) / 1e6 if tput[c] else 0.0 for c in order}
    offered = {c: statistics.median(sent[c]) / 1e6 if sent[c] else 0.0 for c in order}
    k, d = med.get("kernel") or 0, med.get("dpdk") or 0
    ratio = lambda a, b: round(a / b, 2) if b else None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run = {
        "bench": "side-by-side", "date": stamp, "machine": args.machine,
        "load_before": args.load_before, "load_after": args.load_after,
        "command": args.command, "notes": args.notes, "wall_seconds": args.seconds,
        "gateway_rss_mib_1m_endpoints_10k_services": round(args.rss_kb / 1024, 1),
        "contenders": [{
            "name": c, "label": label(c), "median_mpps": round(med[c], 4),
            "generator_mpps": round(offered[c], 4), "windows_mpps": [round(x / 1e6, 4) for x in tput[c]],
            "vs_kernel": ratio(med[c], k), "vs_dpdk": ratio(med[c], d),
            "busy_both_cores": busy.get(c), "latency": lat.get(c)} for c in order],
    }
    # Targets (issue 8).
    g = lambda c: med.get(c)
    targets = []
    def target(name, value, goal, ok):
        targets.append({"target": name, "measured": value, "goal": goal, "met": ok})
    bounce = [g(c) for c in order if c.startswith("gw-bounce")]
    dg = med.get("dpdk-geneve")
    for name, ref in (("dpdk", d), ("dpdk-geneve", dg)):
        if ref and bounce:
            best = max(bounce)
            target(f"gateway bounce >= {name}", round(best / ref, 2), ">= 1.0", best >= ref)
    churn = next((c for c in order if c.startswith("gw-dnat") and "churn" in c), None)
    if churn:
        for kp, goal in (("ipt-5000-churn", 10), ("nft-5000-churn", 2)):
            if g(kp):
                r = g(churn) / g(kp)
                target(f"gateway DNAT churn vs {kp}", round(r, 2), f">= {goal}", r >= goal)
    for small, large in (("gw-bounce-e10-f10000", "gw-bounce-e1000000-f10000"),
                         ("gw-dnat-s10-e10-f10000", "gw-dnat-s10000-e10-f10000"),
                         ("gw-dnat-s10-e10-f10000", "gw-dnat-s10000-e1000000-f10000")):
        if g(small) and g(large):
            r = g(large) / g(small)
            target(f"{large} / {small}", round(r, 2), ">= 0.95", r >= 0.95)
    loss = [json.loads(l) for l in open(args.loss) if l.strip()] if args.loss else []
    run["table_churn"] = loss
    for l in loss:
        if l["mode"] != "baseline":
            applied = (l.get("churn") or {}).get("applied", 0)
            ok = l["lost"] == 0 and l["back_at_generator"] == 0 and not l["gateway_drops"]
            target(f"zero loss and zero misroutes under 1,000 updates/s ({l['mode']})",
                   f"lost {l['lost']}, misrouted {l['back_at_generator']}, drops {l['gateway_drops']}, {applied} updates applied",
                   "0 / 0", ok)
    run["targets"] = targets
    json_path = f"{args.out}/bench-{stamp}.json"
    with open(json_path, "w") as f:
        json.dump(run, f, indent=1)

    rows = ["| contender | delivered Mpps (median) | generator Mpps | vs kernel | vs DPDK | one-way delay p50 / p99 us (at %s) | busy (2 cores) |"
            % "low rate", "|---|---|---|---|---|---|---|"]
    for c in order:
        l = lat.get(c) or {}
        b = busy.get(c)
        rows.append(f"| {label(c)} | {med[c]:.3f} | {offered[c]:.3f} | {ratio(med[c], k)} | {ratio(med[c], d)} | "
                    f"{l.get('p50_us')} / {l.get('p99_us')} | {f'{statistics.median(b):.2f}' if b else ''} |")
    trows = ["| target | measured | goal | met |", "|---|---|---|---|"] + [
        f"| {t['target']} | {t['measured']} | {t['goal']} | {'yes' if t['met'] else 'NO'} |" for t in targets]
    lrows = ["| run | rate pps | sent | delivered | lost (before the gateway / after it) | back at the generator | gateway rx / tx | gateway drops | updates applied (failed), Apply p50 / max ms |",
             "|---|---|---|---|---|---|---|---|---|"] + [
        f"| {l['mode']} | {l['rate_pps']} | {l['sent']} | {l['delivered']} | {l['lost']} "
        f"({l['sent'] - l['gateway'].get('rx_packets', 0)} / {l['gateway'].get('tx_packets', 0) - l['delivered']}) | {l['back_at_generator']} | "
        f"{l['gateway'].get('rx_packets')} / {l['gateway'].get('tx_packets')} | {l['gateway_drops'] or 'none'} | "
        + (f"{l['churn']['applied']} ({l['churn']['failed']}), {l['churn']['apply_ms_p50']:.2f} / {l['churn']['apply_ms_max']:.1f} |" if l.get('churn') else " |")
        for l in loss]
    md = f"""# Side-by-side benchmarks ({stamp})

Machine: {args.machine}. Load (1/5/15 min) before: {args.load_before}; after: {args.load_after}.
Command: `{args.command}` ({args.seconds} s). Raw data: `{json_path.split('/')[-1]}`.

Generator (AF_XDP, copy mode) and sink (XDP counter) on core 0, device under test on core 1,
one veth L2 segment through a bridge namespace; 64-byte frames (Geneve: 64-byte inner frame);
medians of 1 s windows counted at the sink, contenders interleaved round by round. Delay is
one-way (generator stamp to sink, one clock) at a low rate. {args.notes}.

{chr(10).join(rows)}

Gateway RSS with 1,000,000 endpoints and 10,000 services: {run['gateway_rss_mib_1m_endpoints_10k_services']} MiB.

Table churn (sluice-gateway DNAT, 10,000 endpoints, 1,000 services, 10,000 flows, at a fixed rate;
a controller applies 1,000 transactions per second over gRPC Apply, each adding and removing an
endpoint ("churn-endpoints"), and also re-publishing a service with rotated backends ("churn");
"back at the generator" counts misrouted frames, since every other endpoint lives on the sink host):

{chr(10).join(lrows)}

## Targets

{chr(10).join(trows)}
"""
    with open(f"{args.out}/bench.md", "w") as f:
        f.write(md)
    print(md)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plots (scripts/setup.sh --bench installs it)")
        return
    fig, ax = plt.subplots(figsize=(10, 0.4 * len(order) + 1.5))
    ax.barh([label(c) for c in order][::-1], [med[c] for c in order][::-1], color="#4477aa")
    ax.set_xlabel("delivered Mpps (median of 1 s windows)")
    ax.set_title(f"64-byte packets through one core, veth ({stamp})")
    fig.tight_layout()
    fig.savefig(f"{args.out}/bench-throughput.png", dpi=110)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = {
        "iptables, steady": [c for c in order if c.startswith("ipt-") and c.endswith("steady")],
        "iptables, churn": [c for c in order if c.startswith("ipt-") and c.endswith("churn")],
        "nftables map, steady": [c for c in order if c.startswith("nft-") and c.endswith("steady")],
        "nftables map, churn": [c for c in order if c.startswith("nft-") and c.endswith("churn")],
        "sluice-gateway DNAT, 10k flows": [c for c in order if c.startswith("gw-dnat") and c.endswith("f10000") and "-e10-" in c],
    }
    for name, cs in series.items():
        pts = sorted((int(c.split("-")[1] if not c.startswith("gw") else c.split("-s")[1].split("-")[0]), med[c]) for c in cs)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("services")
    ax.set_ylabel("delivered Mpps")
    ax.legend()
    ax.set_title("throughput against number of services")
    fig.tight_layout()
    fig.savefig(f"{args.out}/bench-services.png", dpi=110)


if __name__ == "__main__":
    main()
