"""Hostfiles in DeepSpeed's format: one `host slots=N` per line, `#` comments, blank lines.

Host names end up on an ssh command line, so only plain names and addresses pass: IPv4 and
IPv6 literals (`::1`, `fe80::1%eth0`), and names of letters, digits, `.`, `-`, `_`, not
starting with `-` (ssh would read it as an option). Two spellings of one host (`Node1` and
`node1`, `::1` and `0::1`) are the same host. Every refusal is a RecipeError naming file:line
and the fix. Torch-free.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.errors import RecipeError, listing

if TYPE_CHECKING:
    from launcher.recipe.types import DistributedSection

HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
SLOTS = re.compile(r"slots=(\d+)")


@dataclass(frozen=True)
class Host:
    name: str
    slots: int
    where: str  # file:line, for messages


def host_key(name: str) -> str | None:
    """What two spellings of one host share (an address's canonical form, a name in lower case:
    DNS names are case-insensitive), or None for a name that is neither."""
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower() if HOST_NAME.fullmatch(name) else None


def parse_hostfile(path: str | Path) -> list[Host]:
    """All hosts of a hostfile, in order. Refuses bad lines, bad names, slots=0 and duplicates."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(
            f"distributed.hostfile = {str(path)!r}: no such file. "
            "Fix: point it at a file with one `host slots=N` line per node (see hostfiles/)"
        )
    hosts: list[Host] = []
    seen: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}:{number}"
        parts = line.split()
        slots = SLOTS.fullmatch(parts[-1]) if len(parts) == 2 else None
        if slots is None:
            raise RecipeError(
                f"{where}: {raw.strip()!r} is not a hostfile line. Fix: write `host slots=N`, "
                "e.g. `node1 slots=8` (N = processes on that host, usually its GPUs)"
            )
        name, key = parts[0], host_key(parts[0])
        if key is None:
            raise RecipeError(
                f"{where}: host {name!r} is not a plain host name or address (shell or ssh "
                "metacharacters are refused). Fix: use the name from /etc/hosts or ~/.ssh/config"
            )
        if int(slots.group(1)) < 1:
            raise RecipeError(
                f"{where}: {name} slots=0 runs nothing on that host. "
                "Fix: give it slots >= 1, or remove the line (or --exclude it)"
            )
        if key in seen:
            raise RecipeError(
                f"{where}: host {name} is listed twice (first at {seen[key]}). Fix: keep one line per host"
            )
        seen[key] = where
        hosts.append(Host(name, int(slots.group(1)), where))
    if not hosts:
        raise RecipeError(f"distributed.hostfile = {str(path)!r} lists no hosts. Fix: add `host slots=N` lines")
    return hosts


def _names(option: str, text: str, hosts: list[Host]) -> set[str | None]:
    """The host_key of each comma-separated name, every one a host of the hostfile."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = {host_key(h.name) for h in hosts}
    unknown = [n for n in names if host_key(n) not in known]
    if unknown:
        raise RecipeError(
            f"{option} {listing(names, sep=',')}: {listing(unknown)} not in the hostfile "
            f"(it lists {listing(h.name for h in hosts)}). Fix: name hosts of the hostfile"
        )
    return {host_key(n) for n in names}


def select_hosts(hosts: list[Host], include: str | None = None, exclude: str | None = None) -> list[Host]:
    """Apply --include / --exclude (comma-separated host names), keeping the hostfile's order."""
    if include and exclude:
        raise RecipeError("--include and --exclude were both given. Fix: use one of them")
    if include:
        keep = _names("--include", include, hosts)
        hosts = [h for h in hosts if host_key(h.name) in keep]
    elif exclude:
        drop = _names("--exclude", exclude, hosts)
        hosts = [h for h in hosts if host_key(h.name) not in drop]
    if not hosts:
        raise RecipeError(f"--exclude {exclude} leaves no host. Fix: keep at least one")
    return hosts


def hostfile_hosts(dist: DistributedSection, path: Path, include: str | None, exclude: str | None) -> list[Host]:
    """The recipe's hostfile hosts after the filters, checked against the other distributed keys."""
    hosts = select_hosts(parse_hostfile(path), include, exclude)
    if len({h.slots for h in hosts}) > 1:
        each = listing(f"{h.name} slots={h.slots}" for h in hosts)
        raise RecipeError(
            f"distributed.hostfile: hosts have different slots ({each}); every node starts the same "
            "number of processes. Fix: give every host the same slots, or --exclude the odd ones"
        )
    slots = hosts[0].slots
    if dist["nproc_per_node"] not in ("auto", slots):
        raise RecipeError(
            f"distributed.nproc_per_node = {dist['nproc_per_node']} but the hostfile gives slots={slots}. "
            "Fix: distributed.nproc_per_node=auto (take the slots) or change the hostfile"
        )
    if dist["nnodes"] is not None and dist["nnodes"] != len(hosts):
        raise RecipeError(
            f"distributed.nnodes = {dist['nnodes']} but distributed.hostfile {path} selects {len(hosts)} "
            f"host(s) ({listing(h.name for h in hosts)}). Fix: distributed.nnodes={len(hosts)}, "
            "or choose hosts with --include/--exclude"
        )
    return hosts
