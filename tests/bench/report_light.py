"""The light-load section of BENCHMARKS.md (issue 15), from compare.sh's results.

Rows of kind "light" (vu-bench --rate / --batch --think-us) and the QD1 cell of kind
"vu-bench" (randread-4k-qd1). Called by report.py; `section(rows, meta)` returns the lines.
Medians over rounds, (min-max) in parentheses; ratios are ratios of medians with the range of
the per-round paired ratios.
"""

import statistics
from collections import defaultdict

PEER = "qsd10"
SERVERS = ["ours", "qsd10", "qsd", "ours-base"]
SERVER_TEXT = {
    "ours": "ours",
    "qsd10": "qsd 10.0",
    "qsd": "qsd 7.2",
    "ours-base": "ours-base",
    "ours-poll50": "ours --poll-us 50",
}
CPU_TARGET = 0.5
P50_TARGET = 0.7


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


def rate_key(wl):
    """Sort key: rates by value, bursts after."""
    if wl.startswith("rate-"):
        t = wl[len("rate-"):].lower()
        mult = {"k": 1e3, "m": 1e6}.get(t[-1:], 1)
        try:
            return (0, float(t.rstrip("km")) * mult)
        except ValueError:
            return (0, 0)
    return (1, wl)


class Light:
    def __init__(self, rows):
        self.cells = defaultdict(list)  # (storage, queues, workload, server) -> [(round, result)]
        for r in rows:
            if r["kind"] in ("light", "vu-bench"):
                self.cells[(r["storage"], r["queues"], r["workload"], r["server"])].append((r["round"], r["result"]))
        self.workloads = sorted({k[2] for k in self.cells if k[2].startswith(("rate-", "burst-"))}, key=rate_key)
        self.storages = [s for s in ["tmpfs", "disk"] if any(k[0] == s for k in self.cells)]
        self.queues = sorted({k[1] for k in self.cells})
        present = {k[3] for k in self.cells}
        self.servers = [s for s in SERVERS if s in present] + sorted(present - set(SERVERS))

    def values(self, st, q, wl, srv, key):
        out = []
        for _, res in self.cells[(st, q, wl, srv)]:
            v = per_request(res, key)
            if v is not None:
                out.append(v)
        return out

    def ratio(self, st, q, wl, key, srv="ours", peer=PEER):
        a, b = self.values(st, q, wl, srv, key), self.values(st, q, wl, peer, key)
        if not a or not b or not med(b):
            return None, []
        ra = {rd: per_request(res, key) for rd, res in self.cells[(st, q, wl, srv)]}
        rb = {rd: per_request(res, key) for rd, res in self.cells[(st, q, wl, peer)]}
        paired = [ra[rd] / rb[rd] for rd in ra if rd in rb and ra[rd] and rb[rd]]
        return med(a) / med(b), paired


def per_request(res, key):
    """A figure of one run: a JSON key, or a derived per-request value."""
    n = res.get("completed") or 0
    if key == "wakeups_per_request":
        w = res.get("server_wakeups")
        return w / n if w is not None and n else None
    if key == "server_us_per_request":
        return res.get("server_us_per_request") if n else None
    return res.get(key)


def ratio_text(r, paired):
    if r is None:
        return "-"
    if len(paired) > 1:
        return f"{r:.2f}x ({min(paired):.2f}-{max(paired):.2f})"
    return f"{r:.2f}x"


def verdict(r, target):
    if r is None:
        return "not measured"
    if r <= target:
        return "yes"
    return f"NO: over by {(r - target) / target:.0%}"


def bars(d):
    """(bar, where, measured, target, met) of issue 15."""
    out = []
    at = "tmpfs, 1q"
    for wl in [w for w in d.workloads if w.startswith("rate-")]:
        r, p = d.ratio("tmpfs", 1, wl, "server_us_per_request")
        out.append((f"server CPU per 4k randread request at {wl[5:]} IOPS, ours/{SERVER_TEXT[PEER]}", at,
                    ratio_text(r, p) + cpu_detail(d, "tmpfs", 1, wl), f"<= {CPU_TARGET}x", verdict(r, CPU_TARGET)))
    r, p = d.ratio("tmpfs", 1, "randread-4k-qd1", "lat_p50_us")
    detail = " ({} vs {} us)".format(fmt(med(d.values("tmpfs", 1, "randread-4k-qd1", "ours", "lat_p50_us")), 1),
                                     fmt(med(d.values("tmpfs", 1, "randread-4k-qd1", PEER, "lat_p50_us")), 1))
    out.append((f"QD1 4k randread p50, ours/{SERVER_TEXT[PEER]}", at, ratio_text(r, p) + detail,
                f"<= {P50_TARGET}x", verdict(r, P50_TARGET)))
    return out


def cpu_detail(d, st, q, wl):
    a = med(d.values(st, q, wl, "ours", "server_us_per_request"))
    b = med(d.values(st, q, wl, PEER, "server_us_per_request"))
    return f" ({fmt(a, 2)} vs {fmt(b, 2)} us)"


def section(rows, meta):
    d = Light(rows)
    if not d.workloads:
        return []
    L = []
    w = L.append
    w("## Light load (issue 15)\n")
    w(f"Same run, servers alternating per cell. The peer is qemu-storage-daemon 10.0 (`{meta.get('qsd10_version', '')}`), "
      "7.2 beside it. Server CPU from each server's own cgroup "
      f"({meta.get('cpu_from', 'cgroup')}): every thread and process of the server, exited ones included. "
      "Default settings, no polling.\n")
    w("| bar | where | measured: median (range of per-round ratios) (ours vs peer) | target | met |")
    w("|---|---|---|---|---|")
    for bar, where, val, target, met in bars(d):
        w(f"| {bar} | {where} | {val} | {target} | {met} |")
    w("")
    w("`rate-N`: `vu-bench --rw randread --bs 4k --rate N` (N requests per second over all queues, "
      "open loop: sends at fixed times whatever the server does, at most 32 in flight per queue, "
      "latency from the intended send time). `burst-B-think-Tus`: `--batch B --think-us T` (B requests "
      "with one kick, wait for all, T us idle, again; latency from the send). Columns: achieved IOPS; "
      "server CPU per request (us) and its ratio to qsd 10.0's; server wake-ups per request (voluntary "
      "context switches of its threads, threads that exited during the run missing); latency p50 and "
      "p99 (us, from the intended send time); for rates, `from send` p50 (the server's part) and the "
      "load generator's own send lag p50 (how late its timer woke it: both servers pay it).\n")
    for st in d.storages:
        w(f"### Light load: {st}\n")
        w("| workload | queues | server | IOPS | CPU us/request | vs qsd 10.0 | wake-ups/request | p50 us | p99 us "
          "| from send p50 us | send lag p50 us |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        for wl in d.workloads:
            for q in d.queues:
                for srv in d.servers:
                    if not d.cells.get((st, q, wl, srv)):
                        continue
                    v = lambda key, dg=0: spread(d.values(st, q, wl, srv, key), dg)  # noqa: E731
                    r, p = d.ratio(st, q, wl, "server_us_per_request", srv)
                    vs = "-" if srv == PEER else ratio_text(r, p)
                    w(f"| {wl} | {q} | {SERVER_TEXT.get(srv, srv)} | {v('iops')} | {v('server_us_per_request', 2)} "
                      f"| {vs} | {v('wakeups_per_request', 2)} | {v('lat_p50_us', 1)} | {v('lat_p99_us', 1)} "
                      f"| {v('service_p50_us', 1)} | {v('lag_p50_us', 1)} |")
        w("")
    qd1 = [(st, q) for st in d.storages for q in d.queues if d.cells.get((st, q, "randread-4k-qd1", PEER))]
    if qd1:
        w("QD1 4k randread (the closed-loop cell of the saturation tables), every server:\n")
        w("| storage | queues | server | IOPS | p50 us | p99 us | CPU us/request | wake-ups/request |")
        w("|---|---|---|---|---|---|---|---|")
        for st, q in qd1:
            for srv in d.servers:
                if not d.cells.get((st, q, "randread-4k-qd1", srv)):
                    continue
                v = lambda key, dg=0: spread(d.values(st, q, "randread-4k-qd1", srv, key), dg)  # noqa: E731
                w(f"| {st} | {q} | {SERVER_TEXT.get(srv, srv)} | {v('iops')} | {v('lat_p50_us', 1)} "
                  f"| {v('lat_p99_us', 1)} | {v('server_us_per_request', 2)} | {v('wakeups_per_request', 2)} |")
        w("")
    return L
