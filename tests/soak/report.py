#!/usr/bin/env python3
"""Writes RELIABILITY.md (to stdout) from a soak run's results directory (tests/soak/run.sh).

Reads DIR/machine.txt, DIR/kills-KIND.json, DIR/hostile.tsv (+ logs), DIR/fuzz.log and
DIR/audit.tsv (+ DIR/audit-KIND.log). Exit status 1 when any figure is not clean.
"""

import json
import os
import re
import sys

KIND_TARGETS = {
    "block": ["block_request"],
    "rng": ["rng_request"],
    "vsock": ["vsock_tx"],
    "net": ["net_tx"],
    "protocol": ["message_dispatch", "descriptor_chain", "snapshot_decode"],
}


def read_kv(path):
    out = {}
    if os.path.exists(path):
        for line in open(path, encoding="utf-8"):
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                out[k] = v
    return out


def read_tsv(path):
    if not os.path.exists(path):
        return []
    lines = [l.rstrip("\n").split("\t") for l in open(path, encoding="utf-8")]
    head = lines[0]
    return [dict(zip(head, l)) for l in lines[1:] if l and l[0]]


def fuzz_results(path):
    """Per target: runs, exec/s, seconds, failed, the end of its log when it failed."""
    res = {}
    if not os.path.exists(path):
        return res
    text = open(path, encoding="utf-8", errors="replace").read()
    for m in re.finditer(r"^fuzz: (\w+): Done (\d+) runs in (\d+) second", text, re.M):
        res.setdefault(m.group(1), {})["runs"] = int(m.group(2))
        res[m.group(1)]["seconds"] = int(m.group(3))
    for m in re.finditer(r"^fuzz: (\w+): stat::(\w+):\s+(\d+)", text, re.M):
        res.setdefault(m.group(1), {})[m.group(2)] = int(m.group(3))
    for m in re.finditer(r"^fuzz: (\w+) FAILED; end of its log:\n(.*?)(?=^fuzz: )", text, re.M | re.S):
        r = res.setdefault(m.group(1), {})
        r["failed"] = True
        arts = re.findall(r"(?:Test unit written to|artifact_prefix=)\s*(\S+)", m.group(2))
        r["artifacts"] = arts
        r["tail"] = "\n".join(m.group(2).strip().splitlines()[-12:])
    return res


def audit_summary(path):
    """(device runs, calls after the filter, exercised rules, unexercised [(rule, why)],
    outside-policy lines, passed?)"""
    if not os.path.exists(path):
        return None
    text = open(path, encoding="utf-8", errors="replace").read()
    runs = re.findall(r"^run (\S+): device pid \d+, (\d+) threads, (\d+) calls after the filter", text, re.M)
    calls = sum(int(c) for _, _, c in runs)
    exercised, never, section = 0, [], None
    for line in text.splitlines():
        if line.startswith("exercised rules (calls):"):
            section = "ex"
        elif line.startswith("rules never exercised:"):
            section = "never"
        elif not line.startswith("  "):
            section = None
        elif section == "ex":
            exercised += 1
        elif section == "never":
            why = line.split("cold-path: ", 1)[1] if "cold-path: " in line else "NO cold-path comment"
            never.append((line.split()[0], why))
    outside = re.findall(r"outside the policy: (.*)", text)
    passed = bool(re.search(r"test result: ok\. [1-9]", text))
    return len(runs), calls, exercised, never, outside, passed


def main():
    d = sys.argv[1]
    m = read_kv(os.path.join(d, "machine.txt"))
    kinds = m.get("kinds", "block rng vsock").split()
    hostile = read_tsv(os.path.join(d, "hostile.tsv"))
    fuzz = fuzz_results(os.path.join(d, "fuzz.log"))
    audits = {r["kind"]: r for r in read_tsv(os.path.join(d, "audit.tsv"))}
    clean = True
    o = []
    w = o.append
    w("# Reliability\n")
    w("What the device servers survive, from one soak run (`tests/soak/run.sh`, described in")
    w("`tests/soak/README.md`). Every figure below can be reproduced with the commands given.\n")
    w("## The run\n")
    w(f"- date: {m.get('date', '?')}, commit `{m.get('commit', '?')}`")
    w(f"- machine: {m.get('cpu', '?')}, {m.get('cpus', '?')} CPUs, {m.get('memory', '?')}, kernel {m.get('kernel', '?')}")
    w(f"- {m.get('qemu', '?')} (guests under TCG), {m.get('rustc', '?')}")
    w(f"- load average (1, 5, 15 min) at the start: {m.get('load_start', '?')}, at the end: {m.get('load_end', '?')}"
      " (other work shared the machine)")
    w(f"- settings: {m.get('args', '?')}; took {int(m.get('seconds', '0')) // 60} min")
    cmd = f"bash tests/soak/run.sh {m.get('cmdline', '')}".strip()
    w(f"- command: `{cmd}`")
    w("")
    w("## Summary\n")
    w("| kind | kills survived | guest errors | hostile tests passed (cases) | fuzz execs (crashes) | jail audit |")
    w("|---|---|---|---|---|---|")
    details = []
    for k in kinds + ["protocol"]:
        row, det, ok = kind_section(d, k, hostile, fuzz, audits)
        clean &= ok
        w(row)
        details.append(det)
    w("")
    w("The protocol row is vu-core, which every kind runs: the vhost-user messages, descriptor")
    w("chains and snapshots, fuzzed and attacked with hostile front-ends and drivers.\n")
    findings = os.path.join(os.path.dirname(os.path.abspath(__file__)), "findings.md")
    if os.path.exists(findings):
        w("## Findings (hand-written; `tests/soak/findings.md`, included by `report.py`)\n")
        w(open(findings, encoding="utf-8").read().rstrip("\n") + "\n")
    o.extend(details)
    w(reproduce_section(m))
    print("\n".join(o))
    return 0 if clean else 1


def kill_cell(j):
    if j is None:
        return "not run", False
    ok = j["survived"] == j["planned"] and j["guest_errors"] == 0 and not j["failures"]
    return f"{j['survived']}/{j['planned']}", ok


def kind_section(d, k, hostile, fuzz, audits):
    """The summary row and the detail section of one kind."""
    p = os.path.join(d, f"kills-{k}.json")
    j = json.load(open(p)) if os.path.exists(p) else None
    ok = True
    det = [f"## {k}\n"]
    if k == "protocol":
        kills, kok, errors = "n/a", True, "n/a"
    else:
        kills, kok = kill_cell(j)
        errors = str(j["guest_errors"]) if j else "n/a"
        ok &= kok
        det.extend(kill_details(k, j))
    hs = [h for h in hostile if h["kind"] == k]
    passed = sum(int(h["passed"]) for h in hs)
    failed = sum(int(h["failed"]) for h in hs) + sum(1 for h in hs if h["rc"] != "0" and h["failed"] == "0")
    cases = sum(int(h["cases"]) for h in hs)
    ok &= failed == 0
    hcell = f"{passed}" + (f" ({cases} cases)" if cases else "") + (f", **{failed} failed**" if failed else "")
    if not hs:
        hcell = "not run"
    det.extend(hostile_details(hs))
    tcell, tok, tdet = fuzz_cell(k, fuzz)
    ok &= tok
    det.extend(tdet)
    acell, aok, adet = audit_cell(d, k, audits)
    ok &= aok
    det.extend(adet)
    row = f"| {k} | {kills} | {errors} | {hcell} | {tcell} | {acell} |"
    return row, "\n".join(det) + "\n", ok


def kill_details(k, j):
    out = ["### Kills under load\n"]
    if j is None:
        return out + ["Not run.\n"]
    out.append(f"- {j['survived']} of {j['planned']} SIGKILLs survived; supervisor restarts counted: {j['restarts']};"
               f" {j['checks']} guest-side verifications passed, {j['guest_errors']} failed; {j['seconds'] / 60:.1f} min")
    for n in j["notes"]:
        out.append(f"- verification: {n}")
    out.append(f"- pause schedule seed {j['seed']}: `target/debug/vu-soak kills {k} --kills {j['planned']} --seed {j['seed']} --out kills-{k}.json`")
    if j["failures"]:
        out.append("\nFailures:\n")
        for f in j["failures"]:
            out.append("```\n" + f[:3000] + "\n```")
    out.append("")
    return out


def hostile_details(hs):
    if not hs:
        return []
    out = ["### Hostile-input tests\n", "| test | passed | failed | command |", "|---|---|---|---|"]
    for h in hs:
        out.append(f"| {h['name']} | {h['passed']} | {h['failed']} | `{h['command']}` |")
    out.append("")
    return out


def fuzz_cell(k, fuzz):
    targets = [t for t in KIND_TARGETS.get(k, []) if t in fuzz]
    if not targets:
        return "not run", True, []
    ok, cells, det = True, [], ["### Fuzzing\n", "| target | execs | exec/s | seconds | crashes |", "|---|---|---|---|---|"]
    for t in targets:
        r = fuzz[t]
        crashes = 1 if r.get("failed") else 0
        ok &= crashes == 0
        execs = r.get("number_of_executed_units", r.get("runs", 0))
        cells.append(f"{t} {execs:.2e} ({crashes})".replace("e+0", "e"))
        det.append(f"| {t} | {execs} | {r.get('average_exec_per_sec', '?')} | {r.get('seconds', '?')} | {crashes} |")
        if r.get("failed"):
            det.append(f"\n{t} failed; reproduce with `cd core && RUSTC_BOOTSTRAP=1 cargo fuzz run -s none --no-trace-compares {t} "
                       f"{' '.join(r.get('artifacts', [])) or 'fuzz/artifacts/' + t + '/<crash file>'}`:\n")
            det.append("```\n" + r.get("tail", "") + "\n```")
    det.append("")
    return ", ".join(cells), ok, det


def audit_cell(d, k, audits):
    if k not in audits:
        return "not run", True, []
    s = audit_summary(os.path.join(d, f"audit-{k}.log"))
    rc = audits[k]["rc"]
    if s is None:
        return "no log", False, []
    runs, calls, exercised, never, outside, passed = s
    ok = rc == "0" and passed and not outside
    cell = f"{len(outside)} calls outside the policy, {len(never)} rules never used" + ("" if ok else " (**failed**)")
    det = ["### Jail audit\n",
           f"- `cargo test -p vu-tests --test jail_audit_{k} -- --nocapture`: {'passed' if ok else '**failed**'}",
           f"- {runs} device processes traced, {calls} system calls after the filter; {exercised} rules exercised",
           f"- calls outside the policy: {len(outside)}"]
    for c in outside[:20]:
        det.append(f"  - {c}")
    det.append(f"- rules never used by the workload ({len(never)}), each with the path that needs it:")
    for rule, why in never:
        det.append(f"  - `{rule}`: {why}")
    det.append("")
    return cell, ok, det


def reproduce_section(m):
    return "\n".join([
        "## Reproducing\n",
        "- the whole run: `bash tests/soak/run.sh` (defaults: 100 kills per kind, 10 fuzz minutes per target);"
        " `--kills N --fuzz-minutes T --fuzz-runs N --only \"block rng\" --seed S`; `--quick` for a short check",
        "- one kind's kills: `cargo build -p launcher -p vu-tests --bins && target/debug/vu-soak kills KIND --kills N"
        " --seed S --out k.json` (the seed of each run is in its section; the guest console and launcher log of a"
        " failed run are printed to its log, `target/soak/kills-KIND.log`)",
        "- one fuzz target: `FUZZ_SECONDS=600 FUZZ_TARGETS=vsock_tx bash .ci/fuzz.sh`; a crash:"
        " `cd core && RUSTC_BOOTSTRAP=1 cargo fuzz run -s none --no-trace-compares TARGET fuzz/artifacts/TARGET/crash-...`",
        "- the logs of this run: `target/soak/` (build, kills, hostile tests, fuzz, audits)",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
