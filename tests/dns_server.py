"""A real DNS server for tests (dnslib), on a free loopback UDP port: it answers TXT queries
from a table the test fills, NXDOMAIN for names it does not know; and a "server" that never
answers (a bound UDP socket nobody reads), for resolver timeouts."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from dnslib import QTYPE, RCODE, RR, TXT
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class TxtZone(BaseResolver):
    """``records``: name (lowercase, no trailing dot) -> list of TXT values; a name with an
    empty list exists without TXT records (NODATA)."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.queries: list[str] = []

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        self.queries.append(name)
        if name not in self.records:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.TXT:
            for value in self.records[name]:
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(value), ttl=60))
        return reply


@contextmanager
def dns_server() -> Iterator[tuple[TxtZone, tuple[str, int]]]:
    """``(zone, (address, port))``: a dnslib UDP server on 127.0.0.1 serving ``zone``."""
    zone = TxtZone()
    server = DNSServer(zone, address="127.0.0.1", port=0, logger=DNSLogger(prefix=False, logf=lambda _: None))
    server.start_thread()
    try:
        yield zone, server.server.server_address[:2]
    finally:
        server.stop()
        server.server.server_close()


@contextmanager
def silent_dns_server() -> Iterator[tuple[str, int]]:
    """A loopback UDP port that receives queries and never answers (a resolver times out)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[:2]
    finally:
        sock.close()
