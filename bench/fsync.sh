#!/usr/bin/env bash
# What one durable write costs on the disk it runs on: the floor under every commit of the
# embedded store, which makes one such write per transaction. Writes six 4 KiB pages (as a
# redb commit of the counter does) and then calls fdatasync, COUNT times, and prints the
# wall time per commit (median and p90) and the CPU time the writing thread spent on it,
# next to the same writes without fdatasync, and with direct I/O (`O_DIRECT`, past the
# page cache: then fdatasync, or each write durable by itself with `O_DSYNC`), which a
# store could use instead of the page cache where the file system allows it.
#
#   bench/fsync.sh                 # in target/, on the disk the service's ./data is on
#   DIR=/var/lib/x COUNT=5000 bench/fsync.sh
#
# A benchmark, not a test: it reports numbers and fails only if something does not run.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${DIR:-target}
COUNT=${COUNT:-3000}
command -v python3 >/dev/null || { echo "bench needs python3: apt-get install -y python3" >&2; exit 1; }
mkdir -p "$DIR"
file=$(mktemp "$DIR/fsync.XXXX")
trap 'rm -f "$file"' EXIT

python3 - "$file" "$COUNT" <<'PY'
import mmap, os, statistics, sys, time

path, count = sys.argv[1], int(sys.argv[2])
PAGE, PAGES, SLOTS = 4096, 6, 64
fd = os.open(path, os.O_RDWR)
os.pwrite(fd, b"\0" * PAGE * SLOTS, 0)
os.fsync(fd)
# Page-aligned, as O_DIRECT needs.
page = mmap.mmap(-1, PAGE)
page.write(b"x" * PAGE)

def run(flags, sync):
    target = os.open(path, os.O_RDWR | flags)
    walls = []
    cpu_before = time.thread_time()
    for i in range(count):
        start = time.perf_counter()
        for p in range(PAGES):
            os.pwrite(target, page, ((i * 7 + p * 3) % SLOTS) * PAGE)
        if sync:
            os.fdatasync(target)
        walls.append(time.perf_counter() - start)
    cpu = (time.thread_time() - cpu_before) / count
    os.close(target)
    walls.sort()
    return statistics.median(walls), walls[int(len(walls) * 0.9)], cpu

print(f"{count} commits of {PAGES} pages of 4 KiB in {os.path.dirname(os.path.abspath(path))}")
print(f"{'':34} {'wall p50':>9} {'wall p90':>9} {'CPU':>9}   (µs per commit)")
direct = getattr(os, "O_DIRECT", 0)
ways = [
    ("pwrite x6 + fdatasync", 0, True),
    ("pwrite x6 only (not durable)", 0, False),
    ("O_DIRECT pwrite x6 + fdatasync", direct, True),
    ("O_DIRECT|O_DSYNC pwrite x6", direct | os.O_DSYNC, False),
]
for name, flags, sync in ways:
    try:
        p50, p90, cpu = run(flags, sync)
    except OSError as error:
        print(f"{name:34} not possible here: {error.strerror}")
        continue
    print(f"{name:34} {p50 * 1e6:9.0f} {p90 * 1e6:9.0f} {cpu * 1e6:9.0f}")
PY
