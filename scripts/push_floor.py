#!/usr/bin/env python3
"""The floors under the push path's costs, measured on this machine (docs/ARCHITECTURE.md,
"Push", and the subscribers rows of the README).

  push_floor.py writes --frames-per-sec F --secs S --sockets N --bytes B [--json OUT]
      The kernel's cost of sending small frames over loopback TCP: N connected socket
      pairs, F writes a second of B bytes each, spread over the sockets, for S seconds.
      The writer's system CPU (getrusage) is what the node's kernel spends per pushed
      frame at the least, before any of the node's own work; the reader drains in
      another process, so its cost is not counted.

  push_floor.py connections --node HOST:PORT --pid PID --mode tcp|http|ws --n N [--json OUT]
      The node's resident memory per idle connection, by how far the connection went:
      tcp (accepted, nothing sent), http (one HTTP/1.1 request answered, kept alive),
      ws (upgraded to a WebSocket on /v1/subscribe, nothing subscribed). Run each mode on
      a fresh node: memory a process freed is reused and would hide the cost.

Every loop is bounded in count and time; only 127.0.0.1 and the given node are used.
"""

import argparse
import asyncio
import base64
import json
import os
import resource
import selectors
import socket
import sys
import time


def writes(args):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    total = args.frames_per_sec * args.secs
    reader = os.fork()
    if reader == 0:
        sel = selectors.DefaultSelector()
        for _ in range(args.sockets):
            c = socket.create_connection(("127.0.0.1", port))
            c.setblocking(False)
            sel.register(c, selectors.EVENT_READ)
        deadline = time.time() + args.secs + 60
        while sel.get_map() and time.time() < deadline:
            for key, _ in sel.select(1):
                try:
                    if not key.fileobj.recv(65536):
                        sel.unregister(key.fileobj)
                except BlockingIOError:
                    pass
        os._exit(0)
    conns = [listener.accept()[0] for _ in range(args.sockets)]
    for c in conns:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    frame = b"x" * args.bytes
    r0, t0, sent = resource.getrusage(resource.RUSAGE_SELF), time.time(), 0
    while sent < total and time.time() - t0 < args.secs * 3:
        due = min(int((time.time() - t0) * args.frames_per_sec), total)
        while sent < due:
            conns[sent % args.sockets].send(frame)
            sent += 1
        time.sleep(0.001)
    r1, elapsed = resource.getrusage(resource.RUSAGE_SELF), time.time() - t0
    for c in conns:
        c.close()
    os.waitpid(reader, 0)
    kernel_us = (r1.ru_stime - r0.ru_stime) * 1e6
    out = {
        "writes": sent,
        "bytes": args.bytes,
        "sockets": args.sockets,
        "secs": round(elapsed, 2),
        "kernel_us_per_write": kernel_us / sent,
        "kernel_cores": kernel_us / elapsed / 1e6,
    }
    print(f"push floor: {sent:,} writes of {args.bytes} B over {args.sockets:,} loopback sockets in "
          f"{elapsed:.1f} s: the kernel spent {out['kernel_us_per_write']:.2f} µs per write "
          f"({out['kernel_cores']:.3f} cores)")
    return out


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    raise SystemExit(f"no VmRSS for pid {pid}")


async def connect(host, port, mode, keep, gate):
    async with gate:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        if mode == "http":
            w.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            length = next((int(l.split(b":")[1]) for l in head.split(b"\r\n")
                           if l.lower().startswith(b"content-length:")), 0)
            await asyncio.wait_for(r.readexactly(length), 10)
        elif mode == "ws":
            key = base64.b64encode(os.urandom(16)).decode()
            w.write((f"GET /v1/subscribe HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                     f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            if b" 101 " not in head.split(b"\r\n")[0]:
                raise SystemExit(f"upgrade refused: {head.splitlines()[0]!r}")
        keep.append(w)


async def connections_async(args):
    host, port = args.node.rsplit(":", 1)
    keep, gate = [], asyncio.Semaphore(200)
    before = rss(args.pid)
    await asyncio.gather(*(connect(host, int(port), args.mode, keep, gate) for _ in range(args.n)))
    await asyncio.sleep(5)  # let the node settle
    after = rss(args.pid)
    for w in keep:
        w.close()
    out = {"mode": args.mode, "n": args.n, "rss_before": before, "rss_after": after,
           "bytes_per_connection": (after - before) / args.n}
    print(f"push floor: {args.n:,} idle {args.mode} connections cost the node "
          f"{out['bytes_per_connection'] / 1024:.1f} KiB each")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    w = sub.add_parser("writes")
    w.add_argument("--frames-per-sec", type=int, required=True)
    w.add_argument("--secs", type=int, default=10)
    w.add_argument("--sockets", type=int, default=10000)
    w.add_argument("--bytes", type=int, default=300)
    w.add_argument("--json")
    c = sub.add_parser("connections")
    c.add_argument("--node", required=True)
    c.add_argument("--pid", type=int, required=True)
    c.add_argument("--mode", choices=("tcp", "http", "ws"), required=True)
    c.add_argument("--n", type=int, default=5000)
    c.add_argument("--json")
    args = p.parse_args()
    for name in ("frames_per_sec", "secs", "sockets", "bytes", "n"):
        if getattr(args, name, 1) is not None and getattr(args, name, 1) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    out = writes(args) if args.what == "writes" else asyncio.run(connections_async(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
