#!/usr/bin/env python3
"""A TCP relay for the multi-host tests: the network faults this kernel cannot make.

There is no netem qdisc here, so latency and unreliable links come from this relay on
the storage host, between the workers and a server:

    relay.py --pair 10.77.0.1:15432=10.77.0.1:5432 --delay-ms 1   # 2 ms round trips
    relay.py --pair ... --reset-one-in 50 --seed 7                # flaky connections

--delay-ms D delivers every byte D ms after it arrived, in each direction, without
limiting throughput (a pipe, not a stop-and-wait): a request and its answer each cross
it once, so D = 1 adds 2 ms to every round trip.

--reset-one-in N: each chunk a client sends (a request, near enough) has one chance in N
to doom its connection, which is then reset (RST, as a crashed middlebox or a peer's
reboot does) in both directions a random 0-50 ms later: before, during or after the
answer. The count of resets is written to --stats, so a test can check that the faults
it meant to inject happened.

Runs until SIGTERM.
"""

import argparse
import asyncio
import os
import random
import signal
import socket
import struct
import sys


# Bytes a connection's reader may hold and a read may take: large, so that a fast
# transfer costs few turns of the event loop per MiB. The relay is one Python process on
# the machine it measures: at 64 KiB a turn it took 1.2 to 1.35 s of CPU per GiB passed
# (0.7 to 1.06 s now) and capped curl's parallel download at about 520 MiB/s (about 680).
STREAM_LIMIT = 4 << 20
READ_SIZE = 1 << 20


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

    def write_stats(self):
        if self.stats_path:
            with open(self.stats_path + ".tmp", "w") as out:
                out.write(f"connections {self.connections}\nresets {self.resets}\n")
            # Renamed into place, so a reader never sees half a file.
            os.replace(self.stats_path + ".tmp", self.stats_path)

    async def serve(self, listen, target):
        host, port = listen
        server = await asyncio.start_server(
            lambda r, w: self.accept(r, w, target), host, port, reuse_address=True, limit=STREAM_LIMIT)
        return server

    async def accept(self, client_reader, client_writer, target):
        try:
            server_reader, server_writer = await asyncio.open_connection(*target, limit=STREAM_LIMIT)
        except OSError:
            abort(client_writer)
            return
        for writer in (client_writer, server_writer):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            writer.transport.set_write_buffer_limits(high=STREAM_LIMIT)
        self.connections += 1
        self.write_stats()
        doomed = asyncio.Event()
        pipes = [
            asyncio.create_task(self.pipe(client_reader, server_writer, doomed, upstream=True)),
            asyncio.create_task(self.pipe(server_reader, client_writer, doomed, upstream=False)),
        ]
        reset = asyncio.create_task(doomed.wait())
        done, _ = await asyncio.wait(pipes + [reset], return_when=asyncio.FIRST_COMPLETED)
        if reset in done:
            await asyncio.sleep(self.rng.uniform(0, 0.05))
            self.resets += 1
            self.write_stats()
            for task in pipes:
                task.cancel()
            abort(client_writer)
            abort(server_writer)
            return
        # One direction ended (its sender closed): let the other finish, then close.
        await asyncio.gather(*pipes, return_exceptions=True)
        reset.cancel()
        for writer in (client_writer, server_writer):
            try:
                writer.close()
            except OSError:
                pass

    async def pipe(self, reader, writer, doomed, upstream):
        loop = asyncio.get_running_loop()
        # Bounded, so that a slow receiver slows the sender instead of filling memory.
        queue = asyncio.Queue(maxsize=16)

        async def receive():
            while True:
                try:
                    data = await reader.read(READ_SIZE)
                except OSError:
                    data = b""
                await queue.put((loop.time() + self.delay, data))
                if not data:
                    return
                if upstream and self.reset_one_in and self.rng.randrange(self.reset_one_in) == 0:
                    doomed.set()

        async def deliver():
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(max(0.0, wait - self.overshoot))
                    late = loop.time() - due
                    self.overshoot = min(max(0.0, self.overshoot + 0.1 * late), self.delay)
                if not data:
                    # Pass the half-close on: the other side may still answer.
                    if writer.can_write_eof():
                        try:
                            writer.write_eof()
                        except OSError:
                            pass
                    return
                writer.write(data)
                try:
                    await writer.drain()
                except OSError:
                    return

        receiver = asyncio.create_task(receive())
        try:
            await deliver()
        finally:
            receiver.cancel()


def abort(writer):
    """Closes with RST rather than FIN: SO_LINGER with a zero timeout."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


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
    for server in servers:
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
