"""Peak memory of one export, per stage: the measurement behind the export memory figures in
export/pipeline.py and the README.

    python bench/export_memory.py SOURCE OUT [export options...]
    python bench/export_memory.py bench/results/tmp/models/reranker-base/src /tmp/memory-run

Runs `python -m export SOURCE --out OUT ...` and samples, every 0.2 s, the resident memory of its
whole process tree (the stage processes included); prints the peak seen while each `[export]` log
line was the latest, and the wall time. Reports; never asserts. Linux only (reads /proc).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def tree_rss(root: int) -> int:
    """Resident bytes of `root` and every process below it."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
        todo += children.get(pid, [])
    return total


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    source, out, *extra = argv
    start = time.time()
    process = subprocess.Popen([sys.executable, "-m", "export", source, "--out", out, *extra], cwd=REPO,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    phase, peaks = ["start"], {}

    def sample():
        while process.poll() is None:
            peaks[phase[0]] = max(peaks.get(phase[0], 0), tree_rss(process.pid))
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    for line in process.stderr:
        sys.stderr.write(line)
        if line.startswith("[export]"):
            phase[0] = f"{time.time() - start:6.0f} s  {line[9:80].strip()}"
    process.wait()
    print(f"export exit status {process.returncode}, {time.time() - start:.0f} s; "
          f"peak {max(peaks.values()) / 2**30:.2f} GiB")
    for name, peak in peaks.items():
        print(f"{peak / 2**30:6.2f} GiB  {name}")
    return process.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
