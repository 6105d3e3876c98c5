#!/usr/bin/env python3
"""A mixed workload for scripts/e2e/24-crash-loop.sh, and the check that follows a crash.

    crash_workload.py run MOUNT JOURNAL SEED [--close-commits]
                                               random operations until the mount dies
    crash_workload.py check MOUNT JOURNAL      every durable file intact, every file readable

`run` applies random operations to files under MOUNT (writes across chunk boundaries,
creates, renames, unlinks, truncates, fsync, mkdir) and keeps, in JOURNAL (outside the
mount, itself fsynced line by line), which files are durable and with what contents: a
file becomes durable once it and its directory are fsynced, and stops being durable
just before any operation that may change or remove it. Whatever moment the daemon is
killed at, every durable file must then read back with exactly the recorded bytes.

--close-commits holds the mount to netvol's stronger promise: a file is durable as soon
as the close(2), truncate(2) or rename(2) that changed it has returned, fsync or not
(scripts/e2e/41-hosts-crash.sh).
"""
import errno
import hashlib
import os
import random
import sys

CHUNK = 64 * 1024
DIRS = ["", "a", "a/b", "c"]


class Journal:
    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def note(self, line):
        os.write(self.fd, (line + "\n").encode())
        os.fsync(self.fd)


def durable_files(journal_path):
    """Replays the journal: name -> (sha256, size) of every durable file."""
    durable = {}
    if not os.path.exists(journal_path):
        return durable
    with open(journal_path) as journal:
        for line in journal:
            parts = line.split()
            if not line.endswith("\n") or not parts:
                continue  # a line cut by the kill was never acted on
            if parts[0] == "put":
                durable[parts[1]] = (parts[2], int(parts[3]))
            elif parts[0] == "forget":
                durable.pop(parts[1], None)
    return durable


def fsync_path(path, directory=False):
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run(mount, journal_path, seed, close_commits=False):
    rng = random.Random(seed)
    journal = Journal(journal_path)
    contents = {}  # name -> bytearray: what each file of ours holds
    # Files from earlier rounds: known only by their durable record; they are replaced
    # (never partially changed) so that their contents need not be known.
    old = list(durable_files(journal_path))
    for directory in DIRS[1:]:
        os.makedirs(os.path.join(mount, directory), exist_ok=True)

    def make_durable(name):
        path = os.path.join(mount, name)
        fsync_path(path)
        fsync_path(os.path.dirname(path), directory=True)
        data = bytes(contents[name])
        journal.note("put %s %s %d" % (name, hashlib.sha256(data).hexdigest(), len(data)))

    def forget(name):
        journal.note("forget %s" % name)

    def closed(name):
        """The call that changed `name` returned (and its descriptor is closed)."""
        if close_commits:
            data = bytes(contents[name])
            journal.note("put %s %s %d" % (name, hashlib.sha256(data).hexdigest(), len(data)))

    def new_name():
        return os.path.join(rng.choice(DIRS), "f%d" % rng.randrange(40)).lstrip("/")

    def create():
        nonlocal old
        name = new_name()
        forget(name)
        data = bytearray(rng.randbytes(rng.randrange(0, 3 * CHUNK)))
        with open(os.path.join(mount, name), "wb") as f:
            f.write(data)
        contents[name] = data
        old = [n for n in old if n != name]
        closed(name)
        return name

    # A few durable files first, so that every kill has something durable to lose.
    for _ in range(4):
        make_durable(create())

    while True:
        op = rng.choice(["create", "write", "write", "truncate", "rename", "unlink", "fsync", "create", "replace_old"])
        if op == "create" or not contents:
            name = create()
            if rng.random() < 0.6:
                make_durable(name)
        elif op == "write":
            name = rng.choice(list(contents))
            forget(name)
            # Across chunk boundaries more often than not.
            offset = max(0, rng.randrange(0, 4 * CHUNK) - rng.randrange(0, 512))
            data = rng.randbytes(rng.randrange(1, 2 * CHUNK))
            fd = os.open(os.path.join(mount, name), os.O_WRONLY)
            try:
                os.pwrite(fd, data, offset)
                if rng.random() < 0.5:
                    os.fsync(fd)
            finally:
                os.close(fd)
            buffer = contents[name]
            if len(buffer) < offset:
                buffer.extend(bytes(offset - len(buffer)))
            buffer[offset:offset + len(data)] = data
            closed(name)
            if rng.random() < 0.5:
                make_durable(name)
        elif op == "truncate":
            name = rng.choice(list(contents))
            forget(name)
            size = rng.randrange(0, 4 * CHUNK)
            os.truncate(os.path.join(mount, name), size)
            buffer = contents[name]
            if size < len(buffer):
                del buffer[size:]
            else:
                buffer.extend(bytes(size - len(buffer)))
            closed(name)
            if rng.random() < 0.5:
                make_durable(name)
        elif op == "rename":
            name = rng.choice(list(contents))
            target = new_name()
            if target == name:
                continue
            forget(name)
            forget(target)
            os.rename(os.path.join(mount, name), os.path.join(mount, target))
            contents[target] = contents.pop(name)
            old = [n for n in old if n != target]
            closed(target)
            if rng.random() < 0.6:
                fsync_path(os.path.dirname(os.path.join(mount, name)), directory=True)
                make_durable(target)
        elif op == "unlink":
            name = rng.choice(list(contents))
            forget(name)
            os.unlink(os.path.join(mount, name))
            del contents[name]
        elif op == "fsync":
            name = rng.choice(list(contents))
            make_durable(name)
        elif op == "replace_old" and old:
            name = old.pop(rng.randrange(len(old)))
            forget(name)
            data = bytearray(rng.randbytes(rng.randrange(0, 2 * CHUNK)))
            with open(os.path.join(mount, name), "wb") as f:
                f.write(data)
            contents[name] = data
            make_durable(name)


def check(mount, journal_path):
    problems = []
    for name, (digest, size) in sorted(durable_files(journal_path).items()):
        path = os.path.join(mount, name)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as error:
            problems.append("durable %s: %s" % (name, error))
            continue
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            problems.append("durable %s: %d bytes, expected %d, contents %s" %
                            (name, len(data), size, "differ" if len(data) == size else "cut"))
    # Every file reads whole: a torn or missing chunk would answer EIO.
    files = 0
    for root, _, names in os.walk(mount):
        for name in names:
            files += 1
            try:
                with open(os.path.join(root, name), "rb") as f:
                    while f.read(1 << 20):
                        pass
            except OSError as error:
                problems.append("%s: %s" % (os.path.join(root, name), error))
    for problem in problems:
        print(problem)
    print("checked %d durable files, read %d files: %d problems" %
          (len(durable_files(journal_path)), files, len(problems)))
    return 1 if problems else 0


def main():
    if len(sys.argv) in (5, 6) and sys.argv[1] == "run":
        if len(sys.argv) == 6 and sys.argv[5] != "--close-commits":
            print(__doc__, file=sys.stderr)
            return 2
        try:
            run(sys.argv[2], sys.argv[3], int(sys.argv[4]), close_commits=len(sys.argv) == 6)
        except OSError as error:
            # The daemon was killed: the mount answers ENOTCONN (or the kill landed
            # mid-request). Anything else is a failure of the workload itself.
            if error.errno in (errno.ENOTCONN, errno.ECONNABORTED):
                return 0
            raise
    elif len(sys.argv) == 4 and sys.argv[1] == "check":
        return check(sys.argv[2], sys.argv[3])
    else:
        print(__doc__, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
