#!/usr/bin/env python3
"""Writes BENCHMARKS.md from the raw results of tests/bench/compare.sh.

usage: report.py --results target/vu-bench/results.jsonl --meta target/vu-bench/meta.json
                 --work target/vu-bench --out BENCHMARKS.md

Medians and spreads (min-max over rounds) per cell; ratios ours/qsd as the ratio of the
medians, with the range of the per-round paired ratios; the bars of issue 6 checked and, where
missed, by how much. tests/bench/analysis.md (hand-written notes on the profile) is included
verbatim when it exists.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report_vsock  # noqa: E402  (the vsock section, tests/bench/report_vsock.py)
import report_light  # noqa: E402 - the light-load section, beside this file

WORKLOADS = ["randread-4k-qd1", "randread-4k-qd32", "randwrite-4k-qd32", "read-128k-qd8"]
STORAGE_TEXT = {
    "tmpfs": "tmpfs, buffered (ours: no --direct; qsd: cache.direct=off,aio=threads)",
    "disk": "ext4 on the disk, O_DIRECT + io_uring (ours: --direct; qsd: cache.direct=on,aio=io_uring)",
}


def extra_text(name):
    if name == "ours-sync":
        return "ours with `--engine sync` (preadv/pwritev on the queue thread, one request at a time per queue)"
    if name == "qsd10":
        return ("qemu-storage-daemon 10.0 (bookworm-backports, unpacked by tests/scripts/qemu10.sh), "
                "started as qsd")
    if name == "ours-base":
        return "ours built from the baseline tree given to `compare.sh --base` (the before of an A/B)"
    if name.startswith("ours-poll"):
        us = name[len("ours-poll"):]
        return (f"ours started as `ours` plus `--poll-us {us}` (jailed, as deployed; queue workers "
                "busy-poll up to that long after the last work before sleeping)")
    return "an extra server"


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
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def spread(xs, digits=0):
    if not xs:
        return "-"
    if len(xs) == 1:
        return fmt(xs[0], digits)
    return f"{fmt(med(xs), digits)} ({fmt(min(xs), digits)}-{fmt(max(xs), digits)})"


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def fio_side(j):
    job = j["jobs"][0]
    return job["read"] if job["read"]["io_bytes"] else job["write"]


class Data:
    def __init__(self, rows):
        self.rows = rows
        self.bench = defaultdict(list)  # (storage, queues, workload, server) -> [(round, result)]
        self.fio = defaultdict(list)  # (storage, workload, engine) -> [(round, side, job)]
        self.null = defaultdict(list)  # workload -> [result]
        for r in rows:
            if r["kind"] == "vu-bench":
                self.bench[(r["storage"], r["queues"], r["workload"], r["server"])].append((r["round"], r["result"]))
            elif r["kind"] == "fio":
                job = r["result"]["jobs"][0]
                self.fio[(r["storage"], r["workload"], r["engine"])].append((r["round"], fio_side(r["result"]), job))
            elif r["kind"] == "null":
                self.null[r["workload"]].append(r["result"])
        self.storages = [s for s in ["tmpfs", "disk"] if any(k[0] == s for k in self.bench)]
        self.queues = sorted({k[1] for k in self.bench})

    def values(self, st, q, wl, server, key):
        return [res[key] for _, res in self.bench[(st, q, wl, server)] if res.get(key) is not None]

    def cpu_per_s(self, st, q, wl, server):
        """Server CPU-seconds per second of run, per round."""
        return [res["server_cpu_s"] / res["elapsed_s"] for _, res in self.bench[(st, q, wl, server)]
                if res.get("server_cpu_s") is not None and res.get("elapsed_s")]

    def paired(self, st, q, wl, key, server="ours"):
        a = {rd: res.get(key) for rd, res in self.bench[(st, q, wl, server)]}
        b = {rd: res.get(key) for rd, res in self.bench[(st, q, wl, "qsd")]}
        return [a[rd] / b[rd] for rd in a if rd in b and a[rd] and b[rd]]

    def ratio(self, st, q, wl, key, server="ours"):
        """(ratio of medians server/qsd, per-round paired ratios)."""
        a = self.values(st, q, wl, server, key)
        b = self.values(st, q, wl, "qsd", key)
        if not a or not b or not med(b):
            return None, []
        return med(a) / med(b), self.paired(st, q, wl, key, server)

    def fio_values(self, st, wl, eng, what):
        out = []
        for _, side, job in self.fio[(st, wl, eng)]:
            if what == "iops":
                out.append(side["iops"])
            elif what == "mib_s":
                out.append(side["bw_bytes"] / 2**20)
            elif what == "p50":
                out.append(side["clat_ns"]["percentile"]["50.000000"] / 1000)
            elif what == "cpu":
                out.append((job["usr_cpu"] + job["sys_cpu"]) / 100)
            elif what == "iops_per_cpu_s" and job["usr_cpu"] + job["sys_cpu"] > 0:
                out.append(side["iops"] / ((job["usr_cpu"] + job["sys_cpu"]) / 100))
        return out


def ratio_text(r, paired, digits=2):
    if r is None:
        return "-"
    if len(paired) > 1:
        return f"{r:.{digits}f}x ({min(paired):.{digits}f}-{max(paired):.{digits}f})"
    return f"{r:.{digits}f}x"


FIO_ENGINES = ["psync", "io_uring"]


def host_best(d, st, wl, what, pick=max):
    """(engine, median) of the host fio engine with the best median of `what`, or (None, None)."""
    meds = [(med(xs), eng) for eng in FIO_ENGINES for xs in [d.fio_values(st, wl, eng, what)] if xs]
    if not meds:
        return None, None
    m, eng = pick(meds)
    return eng, m


def out_of_reach(bound, target, higher):
    return (higher and bound < target) or (not higher and bound > target)


def bound_text(text, bound, target, higher):
    if not out_of_reach(bound, target, higher):
        return text
    return f"{text}; {'under' if higher else 'over'} {target}x: out of reach"


def ratio_bound(d, st, q, wl, target, fio_key, qsd_key, higher, show):
    """Best host fio figure over qsd's (highest IOPS, or lowest p50): no server on the same
    kernel path gets past it, and a server with no overhead still waits for the device."""
    eng, host = host_best(d, st, wl, fio_key, pick=max if higher else min)
    qsd = med(d.values(st, q, wl, "qsd", qsd_key))
    if eng is None or not qsd or qsd != qsd:
        return "-"
    r = host / qsd
    return bound_text(f"host {eng} {show(host)} = {r:.2f}x qsd", r, target, higher)


def iops_bound(d, st, q, wl, target):
    return ratio_bound(d, st, q, wl, target, "iops", "iops", True, fmt)


def lat_bound(d, st, q, wl, target):
    return ratio_bound(d, st, q, wl, target, "p50", "lat_p50_us", False,
                       lambda v: f"p50 {fmt(v, 1)} us")


def eff_bound(d, st, q, wl, target):
    """fio's own IOPS per fio CPU-s over qsd's IOPS per server CPU-s: a server that costs per
    request exactly what fio's submission costs. io_uring as asked, psync alongside."""
    qsd = med(d.values(st, q, wl, "qsd", "iops_per_server_cpu_s"))
    if not qsd or qsd != qsd:
        return "-"
    per = {eng: med(xs) for eng in FIO_ENGINES for xs in [d.fio_values(st, wl, eng, "iops_per_cpu_s")] if xs}
    if not per:
        return "-"
    io, ps = per.get("io_uring"), per.get("psync")
    text = f"fio io_uring itself: {fmt(io)}/CPU-s = {io / qsd:.2f}x qsd" if io else "fio io_uring: -"
    if ps:
        text += f" (psync {fmt(ps)} = {ps / qsd:.2f}x)"
    return bound_text(text, max(per.values()) / qsd, target, higher=True)


def cpu_text(d, st, q, wl, srv):
    """Server CPU-s per second of run: srv / ours / qsd (medians)."""
    names = [srv] + [x for x in ["ours", "qsd"] if x != srv]
    return " / ".join(f"{x} {fmt(med(d.cpu_per_s(st, q, wl, x)), 2)}" for x in names)


def bars(d, srv="ours"):
    """Rows: (bar, where, value text, target text, met, note, host bound text, server CPU text),
    for srv against qsd. The host bound does not depend on srv."""
    out = []
    for st in d.storages:
        for q in d.queues:
            at = f"{st}, {q}q"
            cpu = lambda wl: cpu_text(d, st, q, wl, srv)  # noqa: E731
            wl = "randread-4k-qd32"
            r, p = d.ratio(st, q, wl, "iops_per_server_cpu_s", srv)
            out.append((f"QD32 4k randread IOPS per server CPU-s, {srv}/qsd", at, ratio_text(r, p), ">= 2.0x",
                        r is not None and r >= 2.0, shortfall(r, 2.0, higher=True),
                        eff_bound(d, st, q, wl, 2.0), cpu(wl)))
            r, p = d.ratio(st, q, wl, "iops", srv)
            out.append((f"QD32 4k randread IOPS, {srv}/qsd", at, ratio_text(r, p), ">= 1.5x",
                        r is not None and r >= 1.5, shortfall(r, 1.5, higher=True),
                        iops_bound(d, st, q, wl, 1.5), cpu(wl)))
            wl = "randread-4k-qd1"
            r, p = d.ratio(st, q, wl, "lat_p50_us", srv)
            out.append((f"QD1 4k randread p50 latency, {srv}/qsd", at, ratio_text(r, p), "<= 0.7x",
                        r is not None and r <= 0.7, shortfall(r, 0.7, higher=False),
                        lat_bound(d, st, q, wl, 0.7), cpu(wl)))
            wl = "read-128k-qd8"
            mine = d.values(st, q, wl, srv, "mib_s")
            host = d.fio_values(st, wl, "psync", "mib_s")
            r = med(mine) / med(host) if mine and host else None
            out.append((f"128k seq read, {srv} / host pread (fio psync)", at,
                        f"{r:.0%} ({fmt(med(mine))} of {fmt(med(host))} MiB/s)" if r else "-",
                        ">= 80%", r is not None and r >= 0.8, shortfall(r, 0.8, higher=True),
                        f"host pread {fmt(med(host))} MiB/s (the bar's base)" if host else "-", cpu(wl)))
    rss = [v for k, lst in d.bench.items() if k[3] == srv for _, res in lst
           for v in [res.get("device_rss_anon_idle_kib")] if v is not None]
    qrss = [v for k, lst in d.bench.items() if k[3] == "qsd" for _, res in lst
            for v in [res.get("device_rss_anon_idle_kib")] if v is not None]
    if rss:
        m = med(rss)
        out.append((f"Idle device process RssAnon{'' if srv == 'ours' else ', ' + srv}", "all cells",
                    f"{fmt(m)} KiB ({fmt(min(rss))}-{fmt(max(rss))}); qsd {fmt(med(qrss))} KiB",
                    "<= 2048 KiB", m <= 2048, shortfall(m, 2048, higher=False), "-", "-"))
    return out


def met_text(met, note):
    return "yes" if met else "NO: " + note


def shortfall(v, target, higher):
    if v is None:
        return "not measured"
    if higher and v < target:
        return f"short by {(target - v) / target:.0%} (needs {target / v:.2f}x more)"
    if not higher and v > target:
        return f"over by {(v - target) / target:.0%}"
    return ""


def machine(meta):
    model = sh("lscpu | sed -n 's/^Model name: *//p'")
    cores = sh("nproc")
    mem = sh("free -g | awk '/Mem:/{print $2}'")
    kernel = platform.release()
    hyper = sh("lscpu | sed -n 's/^Hypervisor vendor: *//p'")
    where = f"a {hyper} guest" if hyper else "bare metal"
    rows = [("CPU", f"{model}, {cores} CPUs, {where}"),
            ("Memory", f"{mem} GiB"), ("Kernel", kernel), ("OS", sh(". /etc/os-release && echo $PRETTY_NAME"))]
    for key, label in [("tmpfs_image", "tmpfs image"), ("disk_image", "disk image")]:
        path = meta.get(key)
        if path:
            d = os.path.dirname(path)
            src, fstype = (sh(f"df --output=source,fstype {d} | tail -1").split() + ["?", "?"])[:2]
            text = f"`{path}` ({meta.get('image_size')}) on {fstype} ({src})"
            if src.startswith("/dev/"):
                dev = os.path.basename(src)
                info = sh(f"lsblk -dno MODEL,ROTA,SIZE {src}")
                sched = sh(f"cat /sys/block/{dev}/queue/scheduler")
                text += f"; {dev}: {info or '?'} (model, rotational, size), scheduler {sched or '?'}"
            rows.append((label, text))
    rows.append(("qemu-storage-daemon", meta.get("qsd_version", "")))
    if meta.get("qsd10_version"):
        rows.append(("qemu-storage-daemon 10.0", meta["qsd10_version"]))
    rows.append(("fio", sh("fio --version")))
    # Recorded by compare.sh when it built the binaries (the tree may change during a run);
    # results from before it recorded that fall back to the tree as it is now.
    source = meta.get("source")
    if not source:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        rev = sh(f"git -C {root} rev-parse --short HEAD")
        dirty = sh(f"git -C {root} status --porcelain -- core devices launcher | head -1")
        source = f"{rev}{' + uncommitted changes in core/devices/launcher' if dirty else ''} (at report time)"
    rows.append(("Source", source))
    rows.append(("Load average", f"{meta.get('load_before')} before, {meta.get('load_after')} after "
                 "(1/5/15 min; the machine is shared)"))
    return rows


def cpu_method(meta):
    src = meta.get("cpu_from") or "proc"
    if src.startswith("cgroup"):
        return (f"Server CPU is the usage of a cgroup made for the server in each cell ({src[7:]}), so every "
                "thread and process of it counts, exited ones included (io_uring's workers, thread pools);")
    return "Server CPU is utime+stime of the server process and its descendants (`/proc/PID/stat`) over the run;"


def write(d, meta, work, out):
    L = []
    w = L.append
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    w("# Benchmarks: our vhost-user-blk server vs qemu-storage-daemon\n")
    w(f"Generated by `{meta.get('command', 'tests/bench/compare.sh').strip()}` on {now} "
      f"({meta.get('rounds')} round(s), {meta.get('runtime')} s per cell, {meta.get('seconds')} s in all"
      f"{', servers pinned to CPU 1 and the load to CPU 0' if meta.get('pin') else ', nothing pinned'}). "
      "Regenerate with `tests/bench/compare.sh` (`--quick` for a 2-minute check); the raw results "
      "are in `target/vu-bench/results.jsonl`.\n")
    if meta.get("ours_extra"):
        w(f"Our server ran with the extra arguments `{meta['ours_extra']}`.\n")

    w("## The bar (issue 6)\n")
    w("| bar | where | measured: median (range of per-round ratios) | target | met | host bound (fio, same run) |")
    w("|---|---|---|---|---|---|")
    for bar, where, val, target, met, note, bound, _ in bars(d):
        w(f"| {bar} | {where} | {val} | {target} | {met_text(met, note)} | {bound} |")
    w("")
    w("Host bound (fio, same run): an estimate of how far any vhost-user server could get on the cell, "
      "from the host fio runs on the same file in this run (medians; one fio job, also for 2 queues): "
      "best host IOPS / qsd's; fio's IOPS per CPU-s of its own job thread (io-wq work, e.g. buffered "
      "io_uring on tmpfs, is not counted) / qsd's per server CPU-s; best host p50 / qsd's. \"Out of "
      "reach\": the bound misses the target, so no server adding work on the same kernel path meets "
      "that bar on this machine.\n")
    for srv in sorted(x for x in {k[3] for k in d.bench} if x.startswith("ours-poll")):
        us = srv[len("ours-poll"):]
        w(f"### The bar with bounded polling (`--poll-us {us}`, off by default)\n")
        w(f"`{srv}`: {extra_text(srv)}; same cells, same qsd runs. The last column is the server "
          "CPU-seconds per second of run (medians), the price of polling.\n")
        w("| bar | where | measured: median (range of per-round ratios) | target | met "
          f"| server CPU-s per s: {srv} / ours / qsd |")
        w("|---|---|---|---|---|---|")
        for bar, where, val, target, met, note, _, cpu in bars(d, srv):
            w(f"| {bar} | {where} | {val} | {target} | {met_text(met, note)} | {cpu} |")
        w("")

    L.extend(report_light.section(d.rows, meta))

    w("## Machine\n")
    w("| | |")
    w("|---|---|")
    for k, v in machine(meta):
        w(f"| {k} | {v} |")
    w("")

    w("## Method\n")
    w("Each cell starts the server fresh on the same image file, measures it idle, and runs the same "
      "load from the host with `vu-bench` (a vhost-user-blk front-end in `tests/src/bench/`: memfd guest "
      "memory, split rings, one driver thread per queue, EVENT_IDX negotiated, completions by call "
      "eventfd). Within a round the two servers alternate per cell (A/B, then B/A), so drift on this "
      "shared machine hits both. " + cpu_method(meta) + " RssAnon from `/proc/PID/status` of the device process (for ours "
      "the jailed child, for qsd the daemon) before the front-end connects. Tables give the median over "
      "rounds and (min-max).\n")
    w("```")
    w("# ours (A)")
    w("target/release/launcher start block --socket S --file IMG --num-queues N --engine io_uring [--direct]"
      + (f" {meta['ours_extra']}" if meta.get("ours_extra") else ""))
    w("# qemu-storage-daemon (B); tmpfs: cache.direct=off,aio=threads  disk: cache.direct=on,aio=io_uring")
    w("qemu-storage-daemon --blockdev driver=file,node-name=f,filename=IMG,cache.direct=off,aio=threads \\")
    w("    --export type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=S,writable=on,num-queues=N")
    w("# the load, per cell")
    w(f"target/release/vu-bench --socket S --rw randread|randwrite|read --bs 4k|128k --iodepth 1|32|8 "
      f"--queues N --runtime {meta.get('runtime')} --server-pid PID [--server-cgroup CG] --json")
    if any(r["kind"] == "light" for r in d.rows):
        w("# light load, per cell (rates and bursts: see the light-load section)")
        w(f"target/release/vu-bench --socket S --rw randread --bs 4k --rate 2k|10k|50k | --batch 32 --think-us 1000 "
          f"--queues N --runtime {meta.get('runtime')} --server-pid PID [--server-cgroup CG] --json")
    if meta.get("qsd10_version"):
        w("# extra: qsd10, the qsd command with qemu-storage-daemon 10.0 (.cache/qemu-10/bin)")
    w("# the host ceiling, same file, same round")
    w(f"fio --name=ceiling --filename=IMG --rw=... --bs=... --iodepth=... --ioengine=psync|io_uring "
      f"--direct=0|1 --runtime={meta.get('fio_runtime')} --time_based --size={meta.get('image_size')} "
      "--invalidate=0 --output-format=json")
    servers = {k[3] for k in d.bench}
    if "ours-base" in servers:
        w("# extra: ours-base (--base DIR), the same command with DIR/launcher")
    for srv in sorted(x for x in servers if x.startswith("ours-poll")):
        w(f"# extra: {srv}, the ours command plus --poll-us {srv[len('ours-poll'):]}")
        w(f"target/release/launcher start block --socket S --file IMG --num-queues N --engine io_uring "
          f"[--direct] --poll-us {srv[len('ours-poll'):]}")
    if any(r["kind"] == "guest" for r in d.rows):
        w("# secondary (--guest): a TCG guest per cell, fio inside on /dev/vda")
        w(f"target/release/vu-bench guest-fio --socket S --rw randread|read --bs 4k|128k --iodepth 32|8 "
          f"--runtime {meta.get('fio_runtime')} --server-pid PID")
    w("```\n")

    for st in d.storages:
        w(f"## Results: {STORAGE_TEXT.get(st, st)}\n")
        w("| workload | queues | IOPS ours | IOPS qsd | ours/qsd | p50 us ours | p50 us qsd | p99 us ours | p99 us qsd "
          "| IOPS per server CPU-s ours | qsd | ours/qsd | MiB/s ours | MiB/s qsd |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for wl in WORKLOADS:
            for q in d.queues:
                if not d.bench.get((st, q, wl, "ours")) and not d.bench.get((st, q, wl, "qsd")):
                    continue
                v = lambda srv, key, dg=0: spread(d.values(st, q, wl, srv, key), dg)  # noqa: E731
                r_iops = d.ratio(st, q, wl, "iops")
                r_eff = d.ratio(st, q, wl, "iops_per_server_cpu_s")
                w(f"| {wl} | {q} | {v('ours', 'iops')} | {v('qsd', 'iops')} | {ratio_text(*r_iops)} "
                  f"| {v('ours', 'lat_p50_us', 1)} | {v('qsd', 'lat_p50_us', 1)} "
                  f"| {v('ours', 'lat_p99_us', 1)} | {v('qsd', 'lat_p99_us', 1)} "
                  f"| {v('ours', 'iops_per_server_cpu_s')} | {v('qsd', 'iops_per_server_cpu_s')} | {ratio_text(*r_eff)} "
                  f"| {v('ours', 'mib_s', 1)} | {v('qsd', 'mib_s', 1)} |")
        w("")
        extras = sorted({k[3] for k in d.bench if k[0] == st and k[3] not in ("ours", "qsd")})
        for extra in extras:
            w(f"Extra, not part of the bars: `{extra}`, {extra_text(extra)}, measured in the same cells "
              "(server CPU: CPU-seconds per second of run):\n")
            w("| workload | queues | IOPS | p50 us | IOPS per server CPU-s | server CPU | IOPS vs qsd | IOPS vs ours "
              "| p50 vs ours | IOPS/CPU-s vs qsd | IOPS/CPU-s vs ours |")
            w("|---|---|---|---|---|---|---|---|---|---|---|")
            for wl in WORKLOADS:
                for q in d.queues:
                    xs = d.values(st, q, wl, extra, "iops")
                    if not xs:
                        continue
                    def vs(other, key, extra=extra, q=q, wl=wl):
                        a, b = d.values(st, q, wl, extra, key), d.values(st, q, wl, other, key)
                        return f"{med(a) / med(b):.2f}x" if a and b and med(b) else "-"
                    cpu = d.cpu_per_s(st, q, wl, extra)
                    w(f"| {wl} | {q} | {spread(xs)} | {spread(d.values(st, q, wl, extra, 'lat_p50_us'), 1)} "
                      f"| {spread(d.values(st, q, wl, extra, 'iops_per_server_cpu_s'))} | {spread(cpu, 2)} "
                      f"| {vs('qsd', 'iops')} | {vs('ours', 'iops')} | {vs('ours', 'lat_p50_us')} "
                      f"| {vs('qsd', 'iops_per_server_cpu_s')} | {vs('ours', 'iops_per_server_cpu_s')} |")
            w("")
        w(f"Host ceiling on the same file (fio, one job; psync ignores the queue depth):\n")
        w("| workload | psync IOPS | psync MiB/s | psync p50 us | io_uring IOPS | io_uring MiB/s | io_uring p50 us | fio CPU-s per s (psync / io_uring) |")
        w("|---|---|---|---|---|---|---|---|")
        for wl in WORKLOADS:
            f = lambda eng, what, dg=0: spread(d.fio_values(st, wl, eng, what), dg)  # noqa: E731
            if not d.fio.get((st, wl, "psync")):
                continue
            w(f"| {wl} | {f('psync', 'iops')} | {f('psync', 'mib_s', 1)} | {f('psync', 'p50', 1)} "
              f"| {f('io_uring', 'iops')} | {f('io_uring', 'mib_s', 1)} | {f('io_uring', 'p50', 1)} "
              f"| {f('psync', 'cpu', 2)} / {f('io_uring', 'cpu', 2)} |")
        w("")

    guest = defaultdict(list)  # (storage, workload, server) -> [result]
    for row in d.rows:
        if row["kind"] == "guest":
            guest[(row["storage"], row["workload"], row["server"])].append(row["result"])
    if guest:
        w("## Secondary: fio in a TCG guest\n")
        w("`compare.sh --guest`: a fresh QEMU 7.2 TCG guest (1 vCPU, 512 MiB, the image of "
          "`tests/src/guest.rs`) per cell runs `fio --direct=1 --ioengine=libaio` on its vhost-user-blk "
          "disk (1 queue, QEMU's queue size) served by each server. The guest CPU is the bottleneck "
          "under TCG, so this shows what a guest sees, not what a backend can do.\n")
        w("| storage | workload | IOPS ours | IOPS qsd | ours/qsd | MiB/s ours | MiB/s qsd "
          "| clat p50 us ours | qsd | server CPU-s per s ours | qsd |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        for (st, wl) in sorted({(k[0], k[1]) for k in guest}):
            o, q = guest.get((st, wl, "ours"), []), guest.get((st, wl, "qsd"), [])
            g = lambda lst, key: [x[key] for x in lst if x.get(key) is not None]  # noqa: E731
            c = lambda lst: [x["server_cpu_s"] / x["elapsed_s"] for x in lst if x.get("elapsed_s")]  # noqa: E731
            ratio = f"{med(g(o, 'iops')) / med(g(q, 'iops')):.2f}x" if g(o, "iops") and g(q, "iops") else "-"
            w(f"| {st} | {wl} | {spread(g(o, 'iops'))} | {spread(g(q, 'iops'))} | {ratio} "
              f"| {spread(g(o, 'mib_s'), 1)} | {spread(g(q, 'mib_s'), 1)} "
              f"| {spread(g(o, 'clat_p50_us'), 1)} | {spread(g(q, 'clat_p50_us'), 1)} "
              f"| {spread(c(o), 2)} | {spread(c(q), 2)} |")
        w("")

    w("## Memory\n")
    w("| server | device process RssAnon idle KiB | at the end of a run KiB | whole server tree idle KiB |")
    w("|---|---|---|---|")
    for srv in [x for x in ["ours", "qsd"] + sorted({k[3] for k in d.bench} - {"ours", "qsd"}) if any(k[3] == x for k in d.bench)]:
        vals = lambda key: [res[key] for k, lst in d.bench.items() if k[3] == srv  # noqa: E731
                            for _, res in lst if res.get(key) is not None]
        w(f"| {srv} | {spread(vals('device_rss_anon_idle_kib'))} | {spread(vals('device_rss_anon_end_kib'))} "
          f"| {spread(vals('server_rss_anon_idle_kib'))} |")
    w("")

    w("## The load generator's own cost\n")
    w("`vu-bench --null` serves an in-process null device (`vu_core::BackendServer` with a queue handler "
      "that completes every request at once, no I/O): its IOPS are the ceiling of this front-end plus "
      "our core on this machine, and `client ns/request` is vu-bench's own CPU per request "
      "(CLOCK_THREAD_CPUTIME_ID of the driver threads).\n")
    w("| run | IOPS | p50 us | vu-bench CPU ns/request | null server CPU us/request |")
    w("|---|---|---|---|---|")
    for wl, lst in sorted(d.null.items()):
        w(f"| null, {wl}, 1 queue | {spread([r['iops'] for r in lst])} | {spread([r['lat_p50_us'] for r in lst], 1)} "
          f"| {spread([r['client_ns_per_request'] for r in lst])} "
          f"| {spread([r['server_us_per_request'] for r in lst if r.get('server_us_per_request') is not None], 2)} |")
    cl = defaultdict(list)
    for (st, q, wl, srv), lst in d.bench.items():
        for _, res in lst:
            cl[wl].append(res["client_ns_per_request"])
    for wl in WORKLOADS:
        if cl.get(wl):
            w(f"| real servers, {wl} (all cells) | | | {spread(cl[wl])} | |")
    w("")

    profiles = meta.get("profiles") or []
    if profiles:
        w("## Profile: 4k randread QD32, tmpfs, 1 queue\n")
        w("`perf record -e cpu-clock -F 2999 -g -p <server and descendants>` during a vu-bench run "
          "(no hardware counters in this VM, so software-clock sampling); flat profile, "
          "`perf report --no-children --sort dso,symbol`, entries above 0.7%. perf itself costs throughput: compare shares, not absolute figures.\n")
        for srv in profiles:
            w(f"### {srv}\n")
            pj = os.path.join(work, f"profile-{srv}.json")
            if os.path.exists(pj):
                try:
                    j = json.load(open(pj))
                    w(f"During the profile: {fmt(j['iops'])} IOPS, {fmt(j.get('iops_per_server_cpu_s'))} IOPS per server CPU-s "
                      f"({fmt(j.get('server_us_per_request'), 2)} us CPU per request).\n")
                except Exception:  # noqa: BLE001
                    pass
            for name, title in [(f"profile-{srv}-threads.txt", "by thread and binary"), (f"profile-{srv}.txt", "by symbol")]:
                p = os.path.join(work, name)
                if os.path.exists(p):
                    w(f"{title}:\n")
                    w("```")
                    w(open(p).read().rstrip())
                    w("```\n")
            p = os.path.join(work, f"profile-{srv}-callers.txt")
            if os.path.exists(p):
                w(f"<details><summary>{srv}: call chains of the symbols above 4%</summary>\n")
                w("```")
                w(open(p).read().rstrip())
                w("```\n</details>\n")
    here = os.path.dirname(os.path.abspath(__file__))
    notes = os.path.join(here, "analysis.md")
    if os.path.exists(notes):
        w(open(notes).read().rstrip() + "\n")
    with open(out, "w") as f:
        f.write("\n".join(L))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--vsock-only", action="store_true",
                    help="replace only the vsock section of --out (compare.sh --only-vsock)")
    a = ap.parse_args()
    rows = load(a.results)
    meta = json.load(open(a.meta))
    # A block run without --vsock keeps the report's vsock section (write() rewrites the file).
    old = open(a.out).read() if os.path.exists(a.out) else ""
    kept = ""
    if report_vsock.BEGIN in old and report_vsock.END in old:
        b = old.index(report_vsock.BEGIN)
        kept = old[b:old.index(report_vsock.END, b) + len(report_vsock.END)]
    if not a.vsock_only:
        write(Data(rows), meta, a.work, a.out)
    has_vsock = any(r.get("kind") == "vsock" for r in rows)
    if kept and not a.vsock_only and not has_vsock:
        text = open(a.out).read()
        with open(a.out, "w") as f:
            f.write(report_vsock.replace(text, kept))
    if a.vsock_only or has_vsock:
        text = open(a.out).read() if os.path.exists(a.out) else ""
        with open(a.out, "w") as f:
            f.write(report_vsock.replace(text, report_vsock.section(rows, meta)))


if __name__ == "__main__":
    main()
