#!/usr/bin/env python3
"""cql_ping.py - prove that a Cassandra node really serves CQL, with nothing but the stdlib.

Used by services.sh as Cassandra's readiness probe and to set up cassandra-secure's roles
(there is no cqlsh and no driver on the dev machines). It speaks the CQL native protocol v4
directly: STARTUP -> READY, or AUTHENTICATE -> AUTH_RESPONSE (SASL PLAIN, as
PasswordAuthenticator expects) -> AUTH_SUCCESS; then each QUERY -> a RESULT, and prints the
rows of each Rows result (one line per row, columns separated by a tab). With --tls the
connection is TLS first, the server's certificate checked against --ca and the host name.
It is a probe, not a client: one connection, statements one after the other, no paging,
simple column types only.

Exit status: 0 when every statement got a result, 1 on a protocol, TLS or server error, 2 when
the node could not be reached at all (refused, timeout) and on bad arguments (argparse), 3 when
it refused the credentials.

    cql_ping.py                                   # SELECT release_version FROM system.local
    cql_ping.py --host 127.0.0.1 --port 9042 --timeout 5 "SELECT cluster_name FROM system.local"
    cql_ping.py --port 9142 --tls --ca .services/secure/ca.pem --user tally \
        --password-file .services/secure/cassandra-password "SELECT role FROM system_auth.roles"
    cql_ping.py ... - < statements.cql             # one statement per line from stdin
"""

import argparse
import ipaddress
import socket
import ssl
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
OP_AUTH_CHALLENGE = 0x0E
OP_AUTH_RESPONSE = 0x0F
OP_AUTH_SUCCESS = 0x10

RESULT_VOID = 0x0001
RESULT_ROWS = 0x0002
RESULT_SET_KEYSPACE = 0x0003
RESULT_SCHEMA_CHANGE = 0x0005

ERROR_BAD_CREDENTIALS = 0x0100
CONSISTENCY_ONE = 0x0001

HEADER = struct.Struct(">BBhBi")  # version, flags, stream, opcode, body length


class ProbeError(Exception):
    """The node answered, but not with what a serving node answers."""


class CredentialsRefused(ProbeError):
    """The node asked for credentials and refused the ones given."""


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
            raise ProbeError("connection closed by the server; a TLS-only port without --tls?")
        buf += chunk
    return buf


def request(sock, stream, opcode, body):
    try:
        sock.sendall(HEADER.pack(PROTOCOL_V4, 0, stream, opcode, len(body)) + body)
        header = recv_exact(sock, HEADER.size)
    except (ConnectionResetError, BrokenPipeError) as err:
        # Reached, but it hung up: e.g. plain CQL sent to a port that speaks only TLS.
        raise ProbeError(f"connection reset by the server ({err.strerror}); a TLS-only port without --tls?") from err
    version, _flags, _stream, resp_opcode, length = HEADER.unpack(header)
    if version != (PROTOCOL_V4 | RESPONSE_FLAG):
        raise ProbeError(f"unexpected protocol version byte 0x{version:02x} in response")
    resp = Reader(recv_exact(sock, length))
    if resp_opcode == OP_ERROR:
        code = resp.int()
        error = CredentialsRefused if code == ERROR_BAD_CREDENTIALS else ProbeError
        raise error(f"server error 0x{code:04x}: {resp.string()}")
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


def connect(host, port, timeout, tls):
    """A TCP connection, wrapped in TLS when tls is an ssl.SSLContext."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(timeout)
    if tls is None:
        return sock
    try:
        return tls.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def authenticate(sock, authenticator, user, password):
    """SASL PLAIN in one AUTH_RESPONSE: the token is NUL user NUL password."""
    if user is None:
        raise ProbeError(f"server requires authentication ({authenticator}); pass --user and a password")
    token = b"\x00" + user.encode("utf-8") + b"\x00" + password.encode("utf-8")
    opcode, _ = request(sock, 1, OP_AUTH_RESPONSE, struct.pack(">i", len(token)) + token)
    if opcode == OP_AUTH_CHALLENGE:
        raise ProbeError(f"{authenticator} sent a SASL challenge; only PLAIN (one step) is spoken here")
    if opcode != OP_AUTH_SUCCESS:
        raise ProbeError(f"expected AUTH_SUCCESS after AUTH_RESPONSE, got opcode 0x{opcode:02x}")


def query(sock, stream, statement):
    """Runs one statement; returns (column names, rows), both empty for a result without rows."""
    raw = statement.encode("utf-8")
    body = struct.pack(">i", len(raw)) + raw + struct.pack(">HB", CONSISTENCY_ONE, 0)
    opcode, resp = request(sock, stream, OP_QUERY, body)
    if opcode != OP_RESULT:
        raise ProbeError(f"expected RESULT after QUERY, got opcode 0x{opcode:02x}")
    kind = resp.int()
    if kind == RESULT_ROWS:
        return parse_rows(resp)
    if kind in (RESULT_VOID, RESULT_SET_KEYSPACE, RESULT_SCHEMA_CHANGE):
        return [], []
    raise ProbeError(f"unexpected result kind 0x{kind:04x} for: {statement}")


def ping(host, port, timeout, statements, tls=None, user=None, password=None):
    """Yields (column names, rows) per statement."""
    with connect(host, port, timeout, tls) as sock:
        opcode, resp = request(sock, 1, OP_STARTUP, encode_string_map({"CQL_VERSION": "3.0.0"}))
        if opcode == OP_AUTHENTICATE:
            authenticate(sock, resp.string(), user, password)
        elif opcode != OP_READY:
            raise ProbeError(f"expected READY or AUTHENTICATE after STARTUP, got opcode 0x{opcode:02x}")
        elif user is not None:
            # A probe that was told to log in must not pass against a node without authentication.
            raise ProbeError(f"--user {user} given, but the server asks for no authentication")
        for stream, statement in enumerate(statements, start=2):
            yield query(sock, stream, statement)


def tls_context(args):
    """The client side of --tls: the server's certificate must chain to --ca (or the system's
    roots) and name the host; --cert/--key present a client certificate."""
    context = ssl.create_default_context(cafile=args.ca)
    if args.cert:
        context.load_cert_chain(args.cert, args.key)
    return context


def main():
    parser = argparse.ArgumentParser(description="Check that a Cassandra node answers CQL (protocol v4).")
    parser.add_argument("statements", nargs="*", default=["SELECT release_version FROM system.local"],
                        help="statements to run in order; '-' reads one per line from stdin")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9042)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds, per socket operation")
    parser.add_argument("--tls", action="store_true", help="speak TLS (client_encryption_options)")
    parser.add_argument("--ca", help="PEM file of the CA the server's certificate must chain to (with --tls)")
    parser.add_argument("--cert", help="PEM client certificate to present (with --tls)")
    parser.add_argument("--key", help="PEM key of --cert")
    parser.add_argument("--user", help="log in as this role (PasswordAuthenticator)")
    parser.add_argument("--password", help="the role's password (visible to ps: prefer --password-file)")
    parser.add_argument("--password-file", help="file holding the role's password (a trailing newline is dropped)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing, only set the exit status")
    args = parser.parse_args()

    statements = args.statements
    if statements == ["-"]:
        statements = [line.strip() for line in sys.stdin if line.strip()]
    password = args.password
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                password = f.read().rstrip("\n")
        except OSError as err:
            parser.error(f"cannot read --password-file: {err}")
    if args.user is not None and password is None:
        parser.error("--user needs --password or --password-file")

    where = f"{args.host}:{args.port}"
    try:
        tls = tls_context(args) if args.tls else None
        results = list(ping(args.host, args.port, args.timeout, statements, tls, args.user, password))
    except CredentialsRefused as err:
        if not args.quiet:
            print(f"cql_ping: {where}: {err}", file=sys.stderr)
        return 3
    except ProbeError as err:
        if not args.quiet:
            print(f"cql_ping: {where}: {err}", file=sys.stderr)
        return 1
    except ssl.SSLError as err:  # before OSError, its base: the node answered, TLS failed
        if not args.quiet:
            print(f"cql_ping: {where}: TLS: {err}", file=sys.stderr)
        return 1
    except (ConnectionError, socket.timeout, OSError) as err:
        if not args.quiet:
            print(f"cql_ping: cannot reach {where}: {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        for names, rows in results:
            if names:
                print("\t".join(names))
            for row in rows:
                print("\t".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
