"""What a process tree opens on the network, read from Linux's /proc (no tool to install).

:func:`open_sockets` maps the socket inodes held by a set of processes to ``/proc/net/{tcp,tcp6,udp,udp6}``
entries: TCP sockets in LISTEN state and every bound UDP socket (UDP has no listen state: a bound socket
receives). :func:`beyond_loopback` keeps the ones another machine could reach.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

_TCP_LISTEN = "0A"


@dataclass(frozen=True)
class OpenSocket:
    proto: str  # tcp, tcp6, udp, udp6
    address: str
    port: int
    pid: int
    command: str

    def __str__(self) -> str:
        return f"{self.proto} {self.address}:{self.port} ({self.command}, pid {self.pid})"


def descendants(*roots: int) -> set[int]:
    """``roots`` and every process below them (by parent pid)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def _address(hex_address: str, v6: bool) -> tuple[str, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if v6:
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        return socket.inet_ntop(socket.AF_INET6, raw), int(port, 16)
    return socket.inet_ntoa(struct.pack("<I", int(host, 16))), int(port, 16)


def open_sockets(pids: set[int]) -> list[OpenSocket]:
    """Listening TCP and bound UDP sockets held by ``pids``."""
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            inode = fields[9]
            if inode not in owner or (proto.startswith("tcp") and fields[3] != _TCP_LISTEN):
                continue
            address, port = _address(fields[1], proto.endswith("6"))
            pid = owner[inode]
            try:
                command = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                command = "?"
            found.append(OpenSocket(proto, address, port, pid, command))
    return found


def beyond_loopback(sockets: list[OpenSocket]) -> list[OpenSocket]:
    """The sockets bound to anything but a loopback address (0.0.0.0, a LAN address, a multicast group)."""
    return [s for s in sockets if not ipaddress.ip_address(s.address).is_loopback]
