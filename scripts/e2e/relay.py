#!/usr/bin/env python3
"""A TCP relay for the multi-host tests: the network faults this kernel cannot make.

There is no netem qdisc here, so latency and unreliable links come from this relay on
the storage host, between the workers and a server:

    relay.py --pair 10.77.0.1:15432=10.77.0.1:5432 --delay-ms 1   # 2 ms round trips
    relay.py --pair ... --reset-one-in 50 --seed 7                # flaky connections

--delay-ms D delivers every byte D ms after it arrived, in each direction, without
limiting throughput (a pipe, not a stop-and-wait): a request and its answer each cross
it once, so D = 1 adds 2 ms to every round trip. The bytes go from socket to socket
through a kernel pipe (splice), never through the relay's memory: the relay runs on the
machine it measures, and a real network's delay costs that machine nothing.

--reset-one-in N: each chunk a client sends (a request, near enough) has one chance in N
to doom its connection, which is then reset (RST, as a crashed middlebox or a peer's
reboot does) in both directions a random 0-50 ms later: before, during or after the
answer. The count of resets is written to --stats, so a test can check that the faults
it meant to inject happened.

Runs until SIGTERM.
"""

import argparse
import asyncio
import collections
import fcntl
import os
import random
import select
import signal
import socket
import struct
import sys

F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
# Bytes held in one direction of one connection: more than a millisecond of any transfer
# these machines make. A pipe's size is also its count of slots, and a slot may hold a
# fragment of a packet, so it can fill before this many bytes are in it.
PIPE_BYTES = 1 << 20
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
# A read that does not splice: fits in an empty pipe of any size (16 pages at least).
RECV_BYTES = 64 << 10


class Relay:
    def __init__(self, delay, reset_one_in, rng, stats_path):
        self.delay = delay
        # How late a timer fires, on average (the event loop's timeouts are whole
        # milliseconds, and a busy machine wakes it later still): taken off each wait, so
        # that bytes leave D ms after they came, not D plus the overshoot.
        self.overshoot = 0.0
        self.reset_one_in = reset_one_in
        self.rng = rng
        self.stats_path = stats_path
        self.connections = 0
        self.resets = 0
        # The event loop keeps only weak references to tasks: a connection's tasks that
        # all wait on each other's events would be collected mid-transfer.
        self.tasks = set()

    def spawn(self, coroutine):
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def write_stats(self):
        if self.stats_path:
            with open(self.stats_path + ".tmp", "w") as out:
                out.write(f"connections {self.connections}\nresets {self.resets}\n")
            # Renamed into place, so a reader never sees half a file.
            os.replace(self.stats_path + ".tmp", self.stats_path)

    async def serve(self, listen, target):
        loop = asyncio.get_running_loop()
        family, kind, proto, _, address = socket.getaddrinfo(*listen, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
        listener.setblocking(False)

        async def accepting():
            while True:
                client, _ = await loop.sock_accept(listener)
                self.spawn(self.accept(client, target))

        return listener, asyncio.create_task(accepting())

    async def accept(self, client, target):
        loop = asyncio.get_running_loop()
        client.setblocking(False)
        try:
            family, kind, proto, _, address = socket.getaddrinfo(*target, type=socket.SOCK_STREAM)[0]
            server = socket.socket(family, kind, proto)
        except OSError:
            abort(client)
            return
        server.setblocking(False)
        try:
            await loop.sock_connect(server, address)
        except OSError:
            server.close()
            abort(client)
            return
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections += 1
        self.write_stats()
        doomed = asyncio.Event()
        pipes = [
            asyncio.create_task(self.pipe(client, server, doomed, upstream=True)),
            asyncio.create_task(self.pipe(server, client, doomed, upstream=False)),
        ]
        reset = asyncio.create_task(doomed.wait())
        done, _ = await asyncio.wait(pipes + [reset], return_when=asyncio.FIRST_COMPLETED)
        if reset in done:
            await asyncio.sleep(self.rng.uniform(0, 0.05))
            self.resets += 1
            self.write_stats()
            for task in pipes:
                task.cancel()
            # Both done with the sockets (no longer watched) before they are closed.
            await asyncio.gather(*pipes, return_exceptions=True)
            abort(client)
            abort(server)
            return
        # One direction ended (its sender closed): let the other finish, then close.
        await asyncio.gather(*pipes, return_exceptions=True)
        reset.cancel()
        client.close()
        server.close()

    async def pipe(self, source, destination, doomed, upstream):
        loop = asyncio.get_running_loop()
        out, into = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(into, F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass
        capacity = fcntl.fcntl(into, F_GETPIPE_SZ)
        # What came in and when it is due out, in order; a count of 0 is the end.
        pending = collections.deque()
        held = 0
        arrived = asyncio.Event()
        room = asyncio.Event()

        async def receive():
            nonlocal held
            while True:
                if held >= capacity:
                    room.clear()
                    await room.wait()
                    continue
                try:
                    count = os.splice(source.fileno(), into, capacity - held, flags=SPLICE_FLAGS)
                except BlockingIOError:
                    if not has_input(source):
                        await ready(loop.add_reader, loop.remove_reader, source)
                        continue
                    if held > 0:
                        # The pipe's slots are full: wait for the other end to drain it.
                        room.clear()
                        await room.wait()
                        continue
                    # Readable, and yet an empty pipe took nothing: no delivery will make
                    # room, so waiting for one stalls the connection for good (seen once
                    # in a bench run). The bytes go the ordinary way instead, a few
                    # pages' worth, which an empty pipe always has room for.
                    try:
                        data = source.recv(RECV_BYTES)
                    except BlockingIOError:
                        await asyncio.sleep(0.001)
                        continue
                    except OSError:
                        data = b""
                    count = os.write(into, data) if data else 0
                except OSError:
                    count = 0
                held += count
                pending.append((loop.time() + self.delay, count))
                arrived.set()
                if count == 0:
                    return
                if upstream and self.reset_one_in and self.rng.randrange(self.reset_one_in) == 0:
                    doomed.set()

        async def deliver():
            nonlocal held
            while True:
                while not pending:
                    arrived.clear()
                    await arrived.wait()
                due, count = pending[0]
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(max(0.0, wait - self.overshoot))
                    late = loop.time() - due
                    self.overshoot = min(max(0.0, self.overshoot + 0.1 * late), self.delay)
                if count == 0:
                    # Pass the half-close on: the other side may still answer.
                    try:
                        destination.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                while count > 0:
                    try:
                        sent = os.splice(out, destination.fileno(), count, flags=SPLICE_FLAGS)
                    except BlockingIOError:
                        await ready(loop.add_writer, loop.remove_writer, destination)
                        continue
                    except OSError:
                        return
                    count -= sent
                    held -= sent
                    room.set()
                pending.popleft()

        receiver = asyncio.create_task(receive())
        try:
            await deliver()
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
            os.close(out)
            os.close(into)


async def ready(watch, unwatch, sock):
    """Waits until the event loop sees `sock` readable (add_reader) or writable."""
    waiter = asyncio.get_running_loop().create_future()
    watch(sock.fileno(), lambda: waiter.done() or waiter.set_result(None))
    try:
        await waiter
    finally:
        unwatch(sock.fileno())


def has_input(sock):
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def abort(sock):
    """Closes with RST rather than FIN: SO_LINGER with a zero timeout."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def address(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pair", action="append", required=True, metavar="LISTEN=TARGET",
                        help="HOST:PORT to listen on = HOST:PORT to forward to; repeatable")
    parser.add_argument("--delay-ms", type=float, default=0)
    parser.add_argument("--reset-one-in", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stats", default=None, help="file for the counts of connections and resets")
    arguments = parser.parse_args()
    seed = arguments.seed if arguments.seed is not None else random.randrange(1 << 30)
    print(f"relay: seed {seed}", file=sys.stderr, flush=True)
    relay = Relay(arguments.delay_ms / 1000, arguments.reset_one_in, random.Random(seed), arguments.stats)
    relay.write_stats()
    servers = []
    for pair in arguments.pair:
        listen, _, target = pair.partition("=")
        servers.append(await relay.serve(address(listen), address(target)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("relay: ready", file=sys.stderr, flush=True)
    await stop.wait()
    for listener, accepting in servers:
        accepting.cancel()
        listener.close()


if __name__ == "__main__":
    asyncio.run(main())
