#!/usr/bin/env python3
"""Writes the net section of BENCHMARKS.md from the raw results of tests/bench/compare-net.sh.

usage: net_report.py --results WORK/results.jsonl --meta WORK/meta.json --out BENCHMARKS.md
       net_report.py --extract BENCHMARKS.md --section FILE   (save the current section)
       net_report.py --splice BENCHMARKS.md --section FILE    (put a saved section back)

The section sits between the markers NET_BEGIN and NET_END; it replaces an existing one or is
appended, so the sections other scripts write stay as they are. Medians and spreads (min-max
over rounds) per cell; ratios ours/testpmd as the ratio of the medians with the range of the
per-round paired ratios; the bars of issue 12 checked (throughput at least testpmd's, CPU per
packet at most half of testpmd's), saturated and at a light load.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
from collections import defaultdict

NET_BEGIN = "<!-- net:begin: written by tests/bench/net_report.py (tests/bench/compare.sh --net-only) -->"
NET_END = "<!-- net:end -->"
FRAMES = ["64", "1500", "64k"]
FRAME_TEXT = {
    "64": "64-byte frames (60 + FCS; UDP/IPv4)",
    "1500": "1500-byte MTU frames (1514 bytes; UDP/IPv4)",
    "64k": "64 KiB TSO frames (65534 bytes; TCP/IPv4, GSO TCPv4, MSS 1446)",
}
SERVERS = ["ours", "testpmd"]


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001 - best effort machine description
        return ""


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt(v, digits=0):
    if v is None or v != v:
        return "-"
    return f"{v:,.{digits}f}"


def spread(xs, digits=0):
    if not xs:
        return "-"
    if len(xs) == 1:
        return fmt(xs[0], digits)
    return f"{fmt(med(xs), digits)} ({fmt(min(xs), digits)}-{fmt(max(xs), digits)})"


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def cpu_per_frame(j):
    return j.get("server_us_per_frame")


def cpu_per_kib(j):
    return j.get("server_ns_per_kib")


def cores(j):
    cpu = j.get("server_cpu_s")
    return cpu / j["elapsed_s"] if cpu is not None and j["elapsed_s"] > 0 else None


class Data:
    def __init__(self, rows):
        self.cells = defaultdict(dict)  # (server, frame, load) -> {round: result}
        for r in rows:
            if r.get("kind") == "net":
                self.cells[(r["server"], r["frame"], r["load"])][r["round"]] = r["result"]

    def values(self, server, frame, load, key):
        out = []
        for _, j in sorted(self.cells.get((server, frame, load), {}).items()):
            v = key(j) if callable(key) else j.get(key)
            if v is not None:
                out.append(v)
        return out

    def paired(self, frame, load, key):
        """Per-round ratios ours/testpmd."""
        a = self.cells.get(("ours", frame, load), {})
        b = self.cells.get(("testpmd", frame, load), {})
        out = []
        for rnd in sorted(set(a) & set(b)):
            va = key(a[rnd]) if callable(key) else a[rnd].get(key)
            vb = key(b[rnd]) if callable(key) else b[rnd].get(key)
            if va is not None and vb:
                out.append(va / vb)
        return out

    def ratio(self, frame, load, key):
        a = med(self.values("ours", frame, load, key))
        b = med(self.values("testpmd", frame, load, key))
        return (a / b if b and b == b and a == a else float("nan")), self.paired(frame, load, key)


def ratio_text(r, paired):
    if r != r:
        return "-"
    if len(paired) > 1:
        return f"{r:.2f}x ({min(paired):.2f}-{max(paired):.2f})"
    return f"{r:.2f}x"


def bars(d):
    rows = []
    for f in FRAMES:
        what, key = ("frames/s", "pps") if f == "64" else ("payload Gbit/s", "payload_gbit_s")
        r, p = d.ratio(f, "saturate", key)
        rows.append((f"{what}, ours/testpmd", f, "saturated", r, p, ">= 1.0x", r >= 1.0))
    for f in FRAMES:
        for load in ["saturate", "light"]:
            if f == "64k":
                what, key = "server CPU per KiB of payload, ours/testpmd", cpu_per_kib
            else:
                what, key = "server CPU per frame, ours/testpmd", cpu_per_frame
            r, p = d.ratio(f, load, key)
            rows.append((what, f, "saturated" if load == "saturate" else "light", r, p, "<= 0.5x", r <= 0.5))
    return rows


def machine(meta):
    cpu = sh("lscpu | sed -n 's/^Model name: *//p'")
    return (
        f"- CPU: {cpu or platform.processor()}, {os.cpu_count()} CPUs; kernel {platform.release()}\n"
        f"- load average before the run: {meta.get('load_before')}, after: {meta.get('load_after')}; "
        f"busiest processes at the start: {meta.get('busy_before', '').strip()}\n"
        f"- {meta.get('testpmd')}\n"
    )


def cell_table(d, load):
    lines = [
        "| frames | server | frames/s back | payload Gbit/s | server cores | server CPU per frame (us) | "
        "server CPU per KiB payload (ns) | round trip p50 / p99 (us) | frames back per frame sent | lost + written off |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in FRAMES:
        for s in SERVERS:
            if not d.cells.get((s, f, load)):
                continue
            per_sent = d.values(s, f, load, lambda j: j["rx_frames"] / j["tx_frames"] if j["tx_frames"] else None)
            lost = d.values(s, f, load, lambda j: j["lost"] + (1 if j["written_off"] else 0))
            lines.append(
                f"| {f} | {s} | {spread(d.values(s, f, load, 'pps'))} | "
                f"{spread(d.values(s, f, load, 'payload_gbit_s'), 3)} | "
                f"{spread(d.values(s, f, load, cores), 2)} | "
                f"{spread(d.values(s, f, load, cpu_per_frame), 2)} | "
                f"{spread(d.values(s, f, load, cpu_per_kib), 1)} | "
                f"{fmt(med(d.values(s, f, load, 'rtt_p50_us')), 1)} / {fmt(med(d.values(s, f, load, 'rtt_p99_us')), 1)} | "
                f"{fmt(med(per_sent), 2)} | {fmt(sum(lost))} |"
            )
    return "\n".join(lines)


def raw_table(d):
    lines = [
        "| round | server | frames | load | tx frames | rx frames | elapsed s | frames/s | payload Gbit/s | "
        "server CPU s | us/frame | rtt p50 us | client CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (s, f, load), rounds in sorted(d.cells.items()):
        for rnd, j in sorted(rounds.items()):
            lines.append(
                f"| {rnd} | {s} | {f} | {load} | {j['tx_frames']} | {j['rx_frames']} | {j['elapsed_s']:.3f} | "
                f"{j['pps']:.0f} | {j['payload_gbit_s']:.3f} | {fmt(j.get('server_cpu_s'), 3)} | "
                f"{fmt(j.get('server_us_per_frame'), 2)} | {j['rtt_p50_us']:.1f} | {j['client_cpu_s']:.3f} |"
            )
    return "\n".join(lines)


def section(d, meta):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    w = meta.get("windows", {})
    light = meta.get("light", {})
    o = [NET_BEGIN, "## Net: our vhost-user-net server vs DPDK testpmd (vhost PMD to tap PMD)", ""]
    o.append(
        f"Generated by `{meta.get('command')}` on {now} ({meta.get('rounds')} round(s), "
        f"{meta.get('runtime')} s per cell, {meta.get('seconds')} s in all, "
        f"{'servers pinned to CPU 1 and vu-bench to CPU 0' if meta.get('pin') else 'nothing pinned'}; "
        f"source {meta.get('source')}). Run just this part with `tests/bench/compare.sh --net-only` "
        "(`--quick` for a short check); the raw results are in `target/vu-bench/net/results.jsonl` "
        "and in the last table below."
    )
    o.append("")
    o.append("### The bars (issue 12, item 5)")
    o.append("")
    o.append("| bar | frames | load | measured: median (range of per-round ratios) | target | met |")
    o.append("|---|---|---|---|---|---|")
    for what, f, load, r, p, target, ok in bars(d):
        if r != r:
            met = "-"
        elif target.startswith(">="):
            lim = float(target.split()[1].rstrip("x"))
            met = "yes" if ok else f"NO: short by {(lim - r) / lim:.0%}"
        else:
            lim = float(target.split()[1].rstrip("x"))
            met = "yes" if ok else f"NO: over by {(r - lim) / lim:.0%}"
        o.append(f"| {what} | {f} | {load} | {ratio_text(r, p)} | {target} | {met} |")
    o.append("")
    o.append(
        "Throughput is what comes back through the server, its tap and the reflector: frames/s for "
        "64-byte frames, Gbit/s of UDP or TCP payload for the others (testpmd's tap PMD hands a TSO "
        "frame back as 46 segments of at most 1500 bytes, ours as the one 64 KiB frame the kernel "
        "kept whole: payload is what both deliver). Server CPU is every thread of the server's "
        "processes over the measured run, per frame that came back (each crossed the server twice, "
        "out and back) or, for TSO, per KiB of payload. testpmd busy-polls one core whatever the "
        "load, so at a light load its CPU per frame is that core divided by the rate."
    )
    o.append("")
    o.append("### Machine")
    o.append("")
    o.append(machine(meta))
    o.append("### Method")
    o.append("")
    o.append("```sh")
    o.append("# a network namespace for the run (IPv6 off); per server a tap that sends every frame back:")
    o.append("tc qdisc add dev TAP ingress")
    o.append("tc filter add dev TAP parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev TAP")
    o.append("# ours (release, jailed), inside the namespace")
    o.append("ip tuntap add dev vubt0 mode tap multi_queue vnet_hdr")
    o.append("taskset -c 1 target/release/launcher start net --socket S --tap vubt0")
    o.append("# testpmd, inside the namespace (its tap PMD makes vubt1); then in its command file:")
    o.append("# port stop all; port config 1 tx_offload tcp_tso on; port config 1 tx_offload tcp_cksum on; port start all; start")
    o.append("dpdk-testpmd --lcores 0@1,1@1 --no-huge -m 1024 --no-pci \\")
    o.append("    --vdev net_vhost0,iface=S,queues=1,tso=1,legacy-ol-flags=1 --vdev net_tap0,iface=vubt1 -- \\")
    o.append("    --total-num-mbufs=16384 --forward-mode=io --stats-period 3600 --cmdline-file=CMDS")
    o.append("# the load, per cell (windows: " + ", ".join(f"{k}: {v}" for k, v in w.items()) +
             "; light load: " + ", ".join(f"{k}: {v}/s" for k, v in light.items()) + ")")
    o.append("taskset -c 0 target/release/vu-bench net --socket S --frame F --window W [--rate R] \\")
    o.append("    --runtime T --server-pid PID --json")
    o.append("```")
    o.append("")
    o.append(
        "vu-bench net negotiates what a Linux guest would for this traffic where offered (VERSION_1, "
        "MRG_RXBUF, CSUM, GUEST_CSUM, HOST_TSO4, GUEST_TSO4, EVENT_IDX), posts 4 KiB mergeable "
        "receive buffers (1024 per queue) and keeps at most a window of frames' worth of payload "
        "out (sent and not back), so that neither server is fed more than its tap can hold. "
        "The TSO frames are 65534 bytes: a GSO packet of 65536 bytes or more (Ethernet header "
        "included) is segmented by the kernel in software whatever the tap offers."
    )
    o.append("")
    for load, title in [("saturate", "saturated"), ("light", "light load")]:
        o.append(f"### Results, {title}: median (min-max over rounds)")
        o.append("")
        o.append(cell_table(d, load))
        o.append("")
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "net-analysis.md")
    if os.path.exists(notes):
        o.append(open(notes).read().rstrip())
        o.append("")
    o.append("### Raw results (every cell of every round)")
    o.append("")
    o.append(raw_table(d))
    o.append("")
    o.append(NET_END)
    return "\n".join(o) + "\n"


def read_section(text):
    b = text.find(NET_BEGIN)
    e = text.find(NET_END)
    if b < 0 or e < 0:
        return None
    return text[b:e + len(NET_END)] + "\n"


def splice(text, sec):
    b = text.find(NET_BEGIN)
    e = text.find(NET_END)
    if b >= 0 and e >= 0:
        end = e + len(NET_END)
        if text[end:end + 1] == "\n":
            end += 1
        return text[:b] + sec + text[end:]
    if text and not text.endswith("\n"):
        text += "\n"
    return text + ("\n" if text else "") + sec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results")
    ap.add_argument("--meta")
    ap.add_argument("--out")
    ap.add_argument("--extract")
    ap.add_argument("--splice")
    ap.add_argument("--section")
    a = ap.parse_args()
    if a.extract:
        text = open(a.extract).read() if os.path.exists(a.extract) else ""
        sec = read_section(text)
        if sec:
            open(a.section, "w").write(sec)
        return
    if a.splice:
        if not a.section or not os.path.exists(a.section):
            return
        text = open(a.splice).read() if os.path.exists(a.splice) else ""
        open(a.splice, "w").write(splice(text, open(a.section).read()))
        return
    d = Data(load(a.results))
    meta = json.load(open(a.meta))
    sec = section(d, meta)
    text = open(a.out).read() if os.path.exists(a.out) else ""
    open(a.out, "w").write(splice(text, sec))


if __name__ == "__main__":
    main()
