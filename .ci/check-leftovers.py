#!/usr/bin/env python3
"""After the tests: no process the run started is still alive. Every helper a test starts
(nginx and its workers, Caddy, redis-server, the OpenID provider, bearward binaries, grpcio
servers) runs with the repository as its working directory, so a process whose cwd is inside
the repository, other than this script and its ancestors, was left behind by a test.
Usage: check-leftovers.py [--kill]   (--kill also ends them, after reporting)"""
import os
import pathlib
import signal
import sys

root = pathlib.Path(__file__).resolve().parent.parent
mine = set()
pid = os.getpid()
while pid > 1:
    mine.add(pid)
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        break
    pid = int(stat.rsplit(")", 1)[1].split()[1])

left = []
for p in pathlib.Path("/proc").iterdir():
    if not p.name.isdigit() or int(p.name) in mine:
        continue
    try:
        cwd = pathlib.Path(os.readlink(p / "cwd"))
        cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        continue
    if cwd == root or root in cwd.parents:
        left.append((int(p.name), cmd))

for pid, cmd in sorted(left):
    print(f"left behind by the tests: pid {pid}: {cmd}")
if left and "--kill" in sys.argv:
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
print(f"leftover processes: {len(left)}")
sys.exit(1 if left else 0)
