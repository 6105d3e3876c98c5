#!/usr/bin/env python3
"""Helpers for scripts/bench.sh: timing, mmap reads, small-file creation, the report.

Every timing subcommand prints one number (seconds, or IOPS for `fio-iops`) on stdout,
and exits non-zero with a message on stderr when the measured operation failed or
timed out, so the caller records an error for that figure instead of a number.
"""
import json
import mmap
import os
import signal
import statistics
import subprocess
import sys
import time


def die(message, code=1):
    print(message, file=sys.stderr)
    sys.exit(code)


def run_timed(argv, timeout, shell=False, stdout=subprocess.DEVNULL):
    """Runs a command (or a shell pipeline), returns elapsed seconds; kills its whole
    process group when it outlives `timeout` or when this helper is signalled."""
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
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip().splitlines()
        die(f"exit status {proc.returncode}: {argv if shell else ' '.join(argv)}: "
            + (" | ".join(text[-3:]) if text else "(no message)"), 1)
    return elapsed


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
    print(f"{time.perf_counter() - start:.6f}")


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


COMMANDS = {
    "run": cmd_run, "sh": cmd_sh, "mmap": cmd_mmap, "create": cmd_create,
    "filelist": cmd_filelist, "fio-iops": cmd_fio_iops, "hwm": cmd_hwm,
    "report": cmd_report, "rounds": cmd_rounds,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        die("usage: benchtool.py {" + ",".join(COMMANDS) + "} ...", 2)
    try:
        COMMANDS[sys.argv[1]](sys.argv[2:])
    except OSError as error:
        die(f"{sys.argv[1]}: {error}")
