#!/usr/bin/env python3
"""Helpers for scripts/bench.sh: timing, mmap reads, small-file creation, the report.

Every timing subcommand prints one number (seconds, or IOPS for `fio-iops`) on stdout,
and exits non-zero with a message on stderr when the measured operation failed or
timed out, so the caller records an error for that figure instead of a number.

With BENCH_WAIT_RCLONE=HOST:PORT and BENCH_WAIT_S3="METRICS_URL BUCKET BYTES" in the
environment (the network mode sets them for the writing steps of an rclone mount), `run`,
`sh` and `create` stop the clock only once that rclone has uploaded everything: its
`fsync` and `close` return before the upload. Uploaded means: the S3 server has received
BYTES more for BUCKET than when the step started, and rclone has no upload running or
queued.
"""
import json
import mmap
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request


def die(message, code=1):
    print(message, file=sys.stderr)
    sys.exit(code)


def run_timed(argv, timeout, shell=False, stdout=subprocess.DEVNULL):
    """Runs a command (or a shell pipeline), returns elapsed seconds; kills its whole
    process group when it outlives `timeout` or when this helper is signalled."""
    baseline = upload_baseline()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, shell=shell, stdout=stdout, stderr=subprocess.PIPE,
                            start_new_session=True)

    def kill_group(*_):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def on_signal(signum, _frame):
        kill_group()
        os._exit(128 + signum)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group()
        proc.communicate()
        die(f"timed out after {timeout} s: {argv if shell else ' '.join(argv)}", 124)
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip().splitlines()
        die(f"exit status {proc.returncode}: {argv if shell else ' '.join(argv)}: "
            + (" | ".join(text[-3:]) if text else "(no message)"), 1)
    wait_uploads(baseline, start + timeout)
    return time.perf_counter() - start


def rclone_rc(address, call):
    request = urllib.request.Request(f"http://{address}/{call}", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


def s3_totals(url, bucket):
    """SeaweedFS's counters for BUCKET: requests answered (every type and status; a HEAD
    counts as a GET there), bytes sent, bytes received."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    requests = sent = received = 0.0
    label = f'bucket="{bucket}"'
    for line in text.splitlines():
        if line.startswith("#") or label not in line:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith("SeaweedFS_s3_request_total{"):
            requests += value
        elif line.startswith("SeaweedFS_s3_bucket_traffic_sent_bytes_total{"):
            sent += value
        elif line.startswith("SeaweedFS_s3_bucket_traffic_received_bytes_total{"):
            received += value
    return requests, sent, received


def upload_baseline():
    """With BENCH_WAIT_S3 set: the bytes its bucket has received so far."""
    spec = os.environ.get("BENCH_WAIT_S3")
    if not spec:
        return None
    url, bucket, _ = spec.split()
    return s3_totals(url, bucket)[2]


def wait_uploads(baseline, deadline):
    """With BENCH_WAIT_RCLONE and BENCH_WAIT_S3 set: returns once the bucket has received
    the step's bytes and that rclone has no upload running or queued. (rclone queues a
    file's upload when the file's release reaches it, after close(2) has returned, so its
    queue alone could be empty too early.)"""
    address, spec = os.environ.get("BENCH_WAIT_RCLONE"), os.environ.get("BENCH_WAIT_S3")
    if not address or not spec:
        return
    url, bucket, want = spec.split()
    while True:
        cache = rclone_rc(address, "vfs/stats").get("diskCache", {})
        if cache.get("erroredFiles"):
            die(f"rclone reports {cache['erroredFiles']} files whose upload failed")
        if (cache.get("uploadsInProgress", 0) + cache.get("uploadsQueued", 0) == 0
                and s3_totals(url, bucket)[2] - baseline >= int(want)):
            return
        if time.perf_counter() > deadline:
            die("timed out waiting for rclone's uploads", 124)
        time.sleep(0.01)


def cmd_run(args):
    """run TIMEOUT CMD ARGS...: time one command."""
    timeout = float(args[0])
    print(f"{run_timed(args[1:], timeout):.6f}")


def cmd_sh(args):
    """sh TIMEOUT 'PIPELINE': time one shell pipeline (sh -c)."""
    timeout = float(args[0])
    print(f"{run_timed(args[1], timeout, shell=True):.6f}")


def cmd_mmap(args):
    """mmap PATH: map the file read-only and touch every page in order, as a loader of
    safetensors does; prints seconds from open to the last page."""
    path = args[0]
    page = mmap.PAGESIZE
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            die(f"{path} is empty")
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapped:
            view = memoryview(mapped)
            # A strided copy reads one byte of every page in a C loop: each page faults
            # in, and Python's own overhead stays out of the figure.
            touched = view[::page].tobytes()
            view.release()
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    if len(touched) != (size + page - 1) // page:
        die(f"touched {len(touched)} pages of {path}, expected {(size + page - 1) // page}")
    print(f"{elapsed:.6f}")


def cmd_create(args):
    """create DIR NDIRS NFILES SIZE: create NFILES files of SIZE bytes spread over NDIRS
    directories under DIR (which must not exist); prints seconds."""
    root, ndirs, nfiles, size = args[0], int(args[1]), int(args[2]), int(args[3])
    data = os.urandom(size)
    baseline = upload_baseline()
    start = time.perf_counter()
    os.mkdir(root)
    for d in range(ndirs):
        os.mkdir(os.path.join(root, f"d{d:03d}"))
    for i in range(nfiles):
        path = os.path.join(root, f"d{i % ndirs:03d}", f"f{i:05d}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            if os.write(fd, data) != size:
                die(f"short write to {path}")
        finally:
            os.close(fd)
    wait_uploads(baseline, start + 3600)
    print(f"{time.perf_counter() - start:.6f}")


def cmd_ttfb(args):
    """ttfb PATH: seconds from open() to the first byte of the file."""
    start = time.perf_counter()
    fd = os.open(args[0], os.O_RDONLY)
    try:
        got = os.read(fd, 1)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    if len(got) != 1:
        die(f"read no byte from {args[0]}")
    print(f"{elapsed:.6f}")


def cmd_parread(args):
    """parread N TIMEOUT PATH: N processes read the whole file at once (dd, 1 MiB blocks);
    prints seconds until the last one is done, after checking each read every byte."""
    count, timeout, path = int(args[0]), float(args[1]), args[2]
    size = os.stat(path).st_size
    start = time.perf_counter()
    procs = [subprocess.Popen(["dd", f"if={path}", "of=/dev/null", "bs=1M"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True) for _ in range(count)]
    deadline = start + timeout
    failed = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=max(1, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            for other in procs:
                try:
                    os.killpg(other.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            die(f"{count} readers of {path} timed out after {timeout} s", 124)
        text = err.decode(errors="replace")
        copied = re.search(r"^(\d+) bytes", text, re.M)
        if proc.returncode != 0 or not copied or int(copied.group(1)) != size:
            failed.append(text.strip().splitlines()[-1:] or [f"exit {proc.returncode}"])
    elapsed = time.perf_counter() - start
    if failed:
        die(f"{len(failed)} of {count} readers failed or read short: {failed[0][0]}")
    print(f"{elapsed:.6f}")


def cmd_s3count(args):
    """s3count METRICS_URL BUCKET: SeaweedFS's counts for BUCKET: requests, bytes sent,
    bytes received."""
    requests, sent, received = s3_totals(args[0], args[1])
    print(f"{requests:.0f} {sent:.0f} {received:.0f}")


def cmd_filelist(args):
    """filelist OUT ROOT NDIRS NFILES: the NUL-separated paths `create ROOT` makes."""
    out, root, ndirs, nfiles = args[0], args[1], int(args[2]), int(args[3])
    with open(out, "wb") as f:
        for i in range(nfiles):
            f.write(os.path.join(root, f"d{i % ndirs:03d}", f"f{i:05d}").encode() + b"\0")


def cmd_fio_iops(args):
    """fio-iops JSONFILE: read IOPS of the first job of fio's JSON output."""
    with open(args[0]) as f:
        text = f.read()
    # fio may print notes before the JSON document.
    text = text[text.index("{"):]
    job = json.loads(text)["jobs"][0]
    if job.get("error"):
        die(f"fio job error {job['error']}")
    iops = job["read"]["iops"]
    if not iops:
        die("fio read no data")
    print(f"{iops:.1f}")


def cmd_hwm(args):
    """hwm PID: the process's peak resident set (VmHWM) in KiB."""
    with open(f"/proc/{args[0]}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                print(line.split()[1])
                return
    die(f"no VmHWM for pid {args[0]}")


# Figures of the report: key, label, kind. "rate": a throughput, value is MB/s or IOPS,
# ratio fs/raw. "time": seconds, ratio raw/fs. "mem": MiB, no ratio (raw has no daemon).
FIGURES = [
    ("seq_write", "seq write 1 MiB blocks + fsync (MiB/s)", "rate"),
    ("seq_read_cold", "seq read dd, cold (MiB/s)", "rate"),
    ("seq_read_warm", "seq read dd, warm (MiB/s)", "rate"),
    ("mmap_cold", "mmap read every page, cold (MiB/s)", "rate"),
    ("mmap_warm", "mmap read every page, warm (MiB/s)", "rate"),
    ("rand_read", "4 KiB random read, warm (IOPS)", "rate"),
    ("small_create", "create small files (s)", "time"),
    ("small_ls", "ls -lR small files (s)", "time"),
    ("small_cat", "cat all small files (s)", "time"),
    ("small_stat", "stat all small files (s)", "time"),
    ("small_rm", "rm -rf small files (s)", "time"),
    ("tree_cp", "cp -R tree (s)", "time"),
    ("tree_du", "du -s tree (s)", "time"),
    ("tree_tar", "tar c tree (s)", "time"),
    ("tree_rm", "rm -rf tree (s)", "time"),
    ("total", "total of the timed steps above (s)", "time"),
    ("rss_write", "daemon peak RSS, streaming write (MiB)", "mem"),
    ("rss_read", "daemon peak RSS, streaming cold read (MiB)", "mem"),
]

TIME_KEYS = [k for k, _, kind in FIGURES if kind == "time" and k != "total"]


def fmt_value(value, kind):
    if kind == "time":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}"


def read_results(path):
    """The (round, fs, key, value) rows of a results file; malformed lines are skipped."""
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 4:
                yield tuple(parts)


def cmd_report(args):
    """report RESULTS.tsv FS... : the table of medians, ratio to raw."""
    path, systems = args[0], args[1:]
    values = {}   # (fs, key) -> list of floats
    errors = {}   # (fs, key) -> count
    rounds = {}   # (fs, round) -> {key: value}
    for rnd, fs, key, value in read_results(path):
        if value == "ERR":
            errors[(fs, key)] = errors.get((fs, key), 0) + 1
            rounds.setdefault((fs, rnd), {})[key] = None
            continue
        values.setdefault((fs, key), []).append(float(value))
        rounds.setdefault((fs, rnd), {})[key] = float(value)
    # The total of a round counts only when every timed step of it succeeded.
    for (fs, rnd), got in rounds.items():
        if "small_create" not in got and "tree_cp" not in got:
            continue
        steps = [got.get(k) for k in TIME_KEYS]
        if all(s is not None for s in steps):
            values.setdefault((fs, "total"), []).append(sum(steps))
        else:
            errors[(fs, "total")] = errors.get((fs, "total"), 0) + 1

    def median(fs, key):
        got = values.get((fs, key))
        return statistics.median(got) if got else None

    header = ["figure (median)"] + systems
    rows = []
    for key, label, kind in FIGURES:
        if not any((fs, key) in values or (fs, key) in errors for fs in systems):
            continue
        row = [label]
        raw = median("raw", key)
        for fs in systems:
            value = median(fs, key)
            bad = errors.get((fs, key), 0)
            if value is None:
                cell = "ERR" if bad else "-"
            else:
                cell = fmt_value(value, kind)
                if kind != "mem" and raw and fs != "raw" and value > 0:
                    ratio = value / raw if kind == "rate" else raw / value
                    cell += f" ({ratio:.2f}x)"
                if bad:
                    cell += f" [{bad} ERR]"
            row.append(cell)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                                 for i, c in enumerate(cells)) + " |"
    print(line(header))
    print("|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":"
                         for i, w in enumerate(widths)) + "|")
    for r in rows:
        print(line(r))


def cmd_rounds(args):
    """rounds RESULTS.tsv FS...: every measured value, one line per figure and filesystem."""
    path, systems = args[0], args[1:]
    table = {}
    for _, fs, key, value in read_results(path):
        table.setdefault((fs, key), []).append(value)
    keys = [k for k, _, _ in FIGURES]
    order = sorted(table, key=lambda p: (systems.index(p[0]) if p[0] in systems else len(systems),
                                         keys.index(p[1]) if p[1] in keys else len(keys)))
    for fs, key in order:
        print(f"{fs:12s} {key:14s} {' '.join(table[(fs, key)])}")


# The network mode's figures: key, label, kind, reference. Kinds: "rate" (MiB/s, higher is
# better), "time" (seconds), "ms" (seconds shown as milliseconds), "mem" (MiB), "count"
# (no ratio). The reference is the system and figure each cell's ratio is taken to.
NET_FIGURES = [
    ("seq_write", "write 1 MiB blocks + fsync (MiB/s)", "rate", ("limit", "seq_write")),
    ("ttfb", "first byte of a cold open (ms)", "ms", ("limit", "ttfb")),
    ("seq_read_cold", "seq read dd, cold: empty cache (MiB/s)", "rate", ("limit", "seq_read_cold")),
    ("parts_read_cold", "download, the same bytes as 4 MiB objects (MiB/s)", "rate", ("limit", "parts_read_cold")),
    ("seq_read_warm", "seq read dd, remounted, cache warm (MiB/s)", "rate", ("embedded", "seq_read_cold")),
    ("mmap_cold", "mmap every page, cold (MiB/s)", "rate", ("limit", "seq_read_cold")),
    ("mmap_warm", "mmap every page, cache warm (MiB/s)", "rate", ("embedded", "mmap_cold")),
    ("par_read", "8 readers of one file, cold (file MiB/s)", "rate", ("limit", "seq_read_cold")),
    ("small_create", "create small files (s)", "time", ("embedded", "small_create")),
    ("small_ls", "ls -lR small files (s)", "time", ("embedded", "small_ls")),
    ("small_cat", "cat all small files (s)", "time", ("embedded", "small_cat")),
    ("small_stat", "stat all small files (s)", "time", ("embedded", "small_stat")),
    ("small_rm", "rm -rf small files (s)", "time", ("embedded", "small_rm")),
    ("tree_cp", "cp -R tree (s)", "time", ("embedded", "tree_cp")),
    ("tree_du", "du -s tree (s)", "time", ("embedded", "tree_du")),
    ("tree_tar", "tar c tree (s)", "time", ("embedded", "tree_tar")),
    ("tree_rm", "rm -rf tree (s)", "time", ("embedded", "tree_rm")),
    ("total", "total of the timed steps above (s)", "time", ("embedded", "total")),
    ("rss_write", "daemon peak RSS, streaming write (MiB)", "mem", None),
    ("rss_read", "daemon peak RSS, streaming cold read (MiB)", "mem", None),
    ("req_write", "S3 requests per GiB written", "count", None),
    ("req_read_cold", "S3 requests per GiB read, cold", "count", None),
    ("req_read_warm", "S3 requests per GiB read, cache warm", "count", None),
    ("dl_read_cold", "GiB downloaded per GiB read, cold", "ratio", None),
]

REFERENCE_NAMES = {
    ("limit", "seq_write"): "parallel upload",
    ("limit", "ttfb"): "GET, first byte",
    ("limit", "seq_read_cold"): "parallel download",
    ("limit", "parts_read_cold"): "download, 4 MiB objects",
    ("embedded", "seq_read_cold"): "embedded, cold read",
    ("embedded", "mmap_cold"): "embedded, mmap cold",
}


def net_id(system, rtt):
    return system if system == "embedded" else f"{system}-{rtt}ms"


def medians(path):
    """(id, key) -> median, and (id, key) -> count of ERR, over the rounds of a results
    file; the total of a round counts only when every timed step of it succeeded."""
    values, errors, rounds = {}, {}, {}
    for rnd, ident, key, value in read_results(path):
        if value == "ERR":
            errors[(ident, key)] = errors.get((ident, key), 0) + 1
            rounds.setdefault((ident, rnd), {})[key] = None
            continue
        values.setdefault((ident, key), []).append(float(value))
        rounds.setdefault((ident, rnd), {})[key] = float(value)
    for (ident, rnd), got in rounds.items():
        if "small_create" not in got and "tree_cp" not in got:
            continue
        steps = [got.get(k) for k in TIME_KEYS]
        if all(v is not None for v in steps):
            values.setdefault((ident, "total"), []).append(sum(steps))
        else:
            errors[(ident, "total")] = errors.get((ident, "total"), 0) + 1
    return {k: statistics.median(v) for k, v in values.items()}, errors


def ratio_of(value, ref, kind):
    if not value or not ref:
        return None
    return value / ref if kind == "rate" else ref / value


def net_cell(value, kind):
    if kind == "ms":
        value *= 1000
        return f"{value:.1f}" if value < 100 else f"{value:.0f}"
    if kind == "count":
        return f"{value:.0f}"
    if kind == "ratio":
        return f"{value:.2f}"
    return fmt_value(value, "time" if kind == "time" else kind)


def markdown(header, rows):
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(c.ljust(widths[i]) if i in (0, len(cells) - 1) else c.rjust(widths[i])
                                 for i, c in enumerate(cells)) + " |"
    out = [line(header), "|" + "|".join("-" * (w + 2) if i in (0, len(widths) - 1) else "-" * (w + 1) + ":"
                                         for i, w in enumerate(widths)) + "|"]
    out += [line(r) for r in rows]
    print("\n".join(out))


def cmd_netreport(args):
    """netreport RESULTS.tsv RTT SYSTEM...: the network mode's table for one setting:
    medians, each with its ratio to the row's reference (shown in bold), higher is better."""
    path, rtt, systems = args[0], args[1], args[2:]
    med, errors = medians(path)
    rows = []
    for key, label, kind, ref in NET_FIGURES:
        idents = [net_id(s, rtt) for s in systems]
        if not any((i, key) in med or (i, key) in errors for i in idents):
            continue
        refvalue = med.get((net_id(ref[0], rtt), ref[1])) if ref else None
        row = [label]
        for system, ident in zip(systems, idents):
            value, bad = med.get((ident, key)), errors.get((ident, key), 0)
            if ref and system == ref[0] and refvalue is not None:
                cell = f"**{net_cell(refvalue, kind)}**"
            elif value is None:
                cell = "ERR" if bad else "-"
            else:
                cell = net_cell(value, kind)
                ratio = ratio_of(value, refvalue, kind) if ref else None
                if ratio is not None:
                    cell += f" ({ratio:.2f}x)"
            if bad and value is not None:
                cell += f" [{bad} ERR]"
            row.append(cell)
        row.append(REFERENCE_NAMES.get(ref, ref[0]) if ref else "")
        rows.append(row)
    markdown(["figure (median)"] + systems + ["ratio to (bold)"], rows)


# The targets: label, key, kind, comparison, threshold, which settings. A comparison is
# "limit", "juicefs", "embedded" (netvol's figure to that system's, same setting; for
# "embedded" to its cold read) or "self0" (netvol at this setting to netvol at 0 ms).
TARGETS = [
    ("cold seq read >= 0.8 x parallel download", "seq_read_cold", "rate", "limit", 0.8, "all"),
    ("cold seq read >= 1.2 x JuiceFS", "seq_read_cold", "rate", "juicefs", 1.2, "all"),
    ("(shown, no target) cold seq read / download as 4 MiB objects", "seq_read_cold", "rate", "parts", None, "all"),
    ("mmap cold >= JuiceFS", "mmap_cold", "rate", "juicefs", 1.0, "all"),
    ("warm-cache read >= 0.8 x embedded cold read", "seq_read_warm", "rate", "embedded", 0.8, "all"),
    ("write + fsync >= JuiceFS", "seq_write", "rate", "juicefs", 1.0, "all"),
    ("create >= 5 x JuiceFS", "small_create", "time", "juicefs", 5.0, "slow"),
    ("cat >= 5 x JuiceFS", "small_cat", "time", "juicefs", 5.0, "slow"),
    ("cp -R >= 5 x JuiceFS", "tree_cp", "time", "juicefs", 5.0, "slow"),
    ("tar c >= 5 x JuiceFS", "tree_tar", "time", "juicefs", 5.0, "slow"),
    ("ls -lR >= 2 x JuiceFS", "small_ls", "time", "juicefs", 2.0, "slow"),
    ("create >= 0.5 x netvol at 0 ms", "small_create", "time", "self0", 0.5, "slow"),
    ("cat >= 0.5 x netvol at 0 ms", "small_cat", "time", "self0", 0.5, "slow"),
    ("cp -R >= 0.5 x netvol at 0 ms", "tree_cp", "time", "self0", 0.5, "slow"),
    ("tar c >= 0.5 x netvol at 0 ms", "tree_tar", "time", "self0", 0.5, "slow"),
    ("ls -lR >= 0.5 x netvol at 0 ms", "small_ls", "time", "self0", 0.5, "slow"),
    ("daemon peak RSS <= 256 MiB streaming", "rss", "mem", None, 256, "all"),
]


def cmd_targets(args):
    """targets RESULTS.tsv RTT...: netvol's targets, met (✓) or missed (✗), per setting."""
    path, rtts = args[0], args[1:]
    med, _ = medians(path)
    rows = []
    for label, key, kind, other, threshold, where in TARGETS:
        row = [label]
        for rtt in rtts:
            if where == "slow" and float(rtt) == 0:
                row.append("")
                continue
            mine = med.get((net_id("netvol", rtt), key))
            if kind == "mem":
                got = [med.get((net_id("netvol", rtt), k)) for k in ("rss_write", "rss_read")]
                got = [g for g in got if g is not None]
                if not got:
                    row.append("not run")
                    continue
                peak = max(got)
                row.append(f"{peak:.0f} MiB {'✓' if peak <= threshold else '✗'}")
                continue
            if other == "self0":
                theirs, name = med.get((net_id("netvol", "0"), key)), "netvol 0 ms"
            elif other == "embedded":
                theirs, name = med.get(("embedded", "seq_read_cold")), "embedded"
            elif other == "limit":
                theirs, name = med.get((net_id("limit", rtt), key)), "limit"
            elif other == "parts":
                theirs, name = med.get((net_id("limit", rtt), "parts_read_cold")), "limit"
            else:
                theirs, name = med.get((net_id(other, rtt), key)), other
            ratio = ratio_of(mine, theirs, kind)
            if ratio is None:
                row.append("n/a")
                continue
            shown = (lambda v: net_cell(v, kind))
            mark = "" if threshold is None else (" ✓" if ratio >= threshold else " ✗")
            row.append(f"{ratio:.2f}x ({shown(mine)} vs {shown(theirs)}){mark}")
        rows.append(row)
    header = ["target (netvol, medians)"] + [f"{rtt} ms" for rtt in rtts]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(widths[i]) for i, h in enumerate(header)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(r)) + " |")


COMMANDS = {
    "run": cmd_run, "sh": cmd_sh, "mmap": cmd_mmap, "create": cmd_create,
    "filelist": cmd_filelist, "fio-iops": cmd_fio_iops, "hwm": cmd_hwm,
    "report": cmd_report, "rounds": cmd_rounds, "ttfb": cmd_ttfb, "parread": cmd_parread,
    "s3count": cmd_s3count, "netreport": cmd_netreport, "targets": cmd_targets,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        die("usage: benchtool.py {" + ",".join(COMMANDS) + "} ...", 2)
    try:
        COMMANDS[sys.argv[1]](sys.argv[2:])
    except OSError as error:
        die(f"{sys.argv[1]}: {error}")
