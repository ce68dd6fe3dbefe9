#!/usr/bin/env python3
"""cql_ping.py - prove that a Cassandra node really serves CQL, with nothing but the stdlib.

Used by services.sh as Cassandra's readiness probe (there is no cqlsh and no driver on the
dev machines). It speaks the CQL native protocol v4 directly: STARTUP -> expect READY, then
one QUERY -> expect a RESULT of kind Rows, and prints the rows (one line per row, columns
separated by a tab). It is a probe, not a client: one connection, one query, no paging, no
authentication (the dev cluster uses AllowAllAuthenticator), simple column types only.

Exit status: 0 when the query returned rows metadata (even zero rows), 1 on a protocol or
server error, 2 when the node could not be reached at all (refused, timeout).

    cql_ping.py                                   # SELECT release_version FROM system.local
    cql_ping.py --host 127.0.0.1 --port 9042 --timeout 5 "SELECT cluster_name FROM system.local"
"""

import argparse
import ipaddress
import socket
import struct
import sys
import uuid

PROTOCOL_V4 = 0x04
RESPONSE_FLAG = 0x80  # set in the version byte of every server response

# Opcodes (native_protocol_v4.spec, section 2.4).
OP_ERROR = 0x00
OP_STARTUP = 0x01
OP_READY = 0x02
OP_AUTHENTICATE = 0x03
OP_QUERY = 0x07
OP_RESULT = 0x08

RESULT_ROWS = 0x0002
CONSISTENCY_ONE = 0x0001

HEADER = struct.Struct(">BBhBi")  # version, flags, stream, opcode, body length


class ProbeError(Exception):
    """The node answered, but not with what a serving node answers."""


class Reader:
    """Cursor over a response body, with the protocol's notations ([string], [bytes], ...)."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ProbeError("truncated response body")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self):
        return struct.unpack(">i", self.take(4))[0]

    def short(self):
        return struct.unpack(">H", self.take(2))[0]

    def string(self):
        return self.take(self.short()).decode("utf-8", "replace")

    def bytes(self):
        n = self.int()
        return None if n < 0 else self.take(n)

    def option(self):
        """A column type; returns its id (nested types are read and dropped)."""
        type_id = self.short()
        if type_id == 0x0000:  # custom: class name
            self.string()
        elif type_id in (0x0020, 0x0022):  # list, set
            self.option()
        elif type_id == 0x0021:  # map
            self.option()
            self.option()
        elif type_id == 0x0030:  # UDT
            self.string()
            self.string()
            for _ in range(self.short()):
                self.string()
                self.option()
        elif type_id == 0x0031:  # tuple
            for _ in range(self.short()):
                self.option()
        return type_id


def encode_string_map(pairs):
    out = struct.pack(">H", len(pairs))
    for key, value in pairs.items():
        for s in (key, value):
            raw = s.encode("utf-8")
            out += struct.pack(">H", len(raw)) + raw
    return out


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProbeError("connection closed by the server")
        buf += chunk
    return buf


def request(sock, stream, opcode, body):
    sock.sendall(HEADER.pack(PROTOCOL_V4, 0, stream, opcode, len(body)) + body)
    version, _flags, _stream, resp_opcode, length = HEADER.unpack(recv_exact(sock, HEADER.size))
    if version != (PROTOCOL_V4 | RESPONSE_FLAG):
        raise ProbeError(f"unexpected protocol version byte 0x{version:02x} in response")
    resp = Reader(recv_exact(sock, length))
    if resp_opcode == OP_ERROR:
        code = resp.int()
        raise ProbeError(f"server error 0x{code:04x}: {resp.string()}")
    return resp_opcode, resp


def decode_value(type_id, raw):
    if raw is None:
        return "null"
    if type_id in (0x0001, 0x000D):  # ascii, varchar
        return raw.decode("utf-8", "replace")
    if type_id == 0x0009:  # int
        return str(struct.unpack(">i", raw)[0])
    if type_id in (0x0002, 0x000B):  # bigint, timestamp
        return str(struct.unpack(">q", raw)[0])
    if type_id == 0x0004:  # boolean
        return "true" if raw != b"\x00" else "false"
    if type_id in (0x000C, 0x000F):  # uuid, timeuuid
        return str(uuid.UUID(bytes=raw))
    if type_id == 0x0010:  # inet
        return str(ipaddress.ip_address(raw))
    return "0x" + raw.hex()


def parse_rows(resp):
    flags = resp.int()
    column_count = resp.int()
    if flags & 0x0002:  # Has_more_pages: skip the paging state
        resp.bytes()
    if flags & 0x0004:  # No_metadata (we never ask for it, but be exact)
        names, types = [f"col{i}" for i in range(column_count)], [None] * column_count
    else:
        global_spec = bool(flags & 0x0001)
        if global_spec:
            resp.string()  # keyspace
            resp.string()  # table
        names, types = [], []
        for _ in range(column_count):
            if not global_spec:
                resp.string()
                resp.string()
            names.append(resp.string())
            types.append(resp.option())
    rows = []
    for _ in range(resp.int()):
        rows.append([decode_value(types[i], resp.bytes()) for i in range(column_count)])
    return names, rows


def ping(host, port, timeout, query):
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        opcode, _ = request(sock, 1, OP_STARTUP, encode_string_map({"CQL_VERSION": "3.0.0"}))
        if opcode == OP_AUTHENTICATE:
            raise ProbeError("server requires authentication; this probe only speaks to AllowAllAuthenticator")
        if opcode != OP_READY:
            raise ProbeError(f"expected READY after STARTUP, got opcode 0x{opcode:02x}")
        raw_query = query.encode("utf-8")
        body = struct.pack(">i", len(raw_query)) + raw_query + struct.pack(">HB", CONSISTENCY_ONE, 0)
        opcode, resp = request(sock, 2, OP_QUERY, body)
        if opcode != OP_RESULT:
            raise ProbeError(f"expected RESULT after QUERY, got opcode 0x{opcode:02x}")
        kind = resp.int()
        if kind != RESULT_ROWS:
            raise ProbeError(f"expected a Rows result, got result kind 0x{kind:04x}")
        return parse_rows(resp)


def main():
    parser = argparse.ArgumentParser(description="Check that a Cassandra node answers a CQL query (protocol v4).")
    parser.add_argument("query", nargs="?", default="SELECT release_version FROM system.local")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9042)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds, per socket operation")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing, only set the exit status")
    args = parser.parse_args()

    where = f"{args.host}:{args.port}"
    try:
        names, rows = ping(args.host, args.port, args.timeout, args.query)
    except (ConnectionError, socket.timeout, OSError) as err:
        if not args.quiet:
            print(f"cql_ping: cannot reach {where}: {err}", file=sys.stderr)
        return 2
    except ProbeError as err:
        if not args.quiet:
            print(f"cql_ping: {where}: {err}", file=sys.stderr)
        return 1
    if not args.quiet:
        print("\t".join(names))
        for row in rows:
            print("\t".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
