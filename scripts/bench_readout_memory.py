"""How much host memory the ridge readout's fit takes, measured against what the planner says it takes.

    python scripts/bench_readout_memory.py            # four shapes, one fresh process each
    python scripts/bench_readout_memory.py 85000 30000 1280   # one shape: train rows, dev rows, features

Each shape runs ``RidgeReadout.fit`` in its own process (3 outputs, rescaled, two penalties) and reads the
process's peak resident memory (Linux ``VmHWM``, reset just before the inputs are made) above where it stood;
``RidgeReadout.fit_bytes(...)["total"]`` is what ``llmser plan`` adds for the fit. The ratio is measured /
planned. Linux only (``/proc/self/clear_refs``)."""

from __future__ import annotations

import subprocess
import sys

SHAPES = [(6000, 2000, 1500), (1500, 500, 6000), (240, 80, 1920), (10000, 3000, 1280)]

CHILD = """
import gc, sys, torch
torch.set_num_threads(1)
from llmser.models.readout import RidgeReadout
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
n, m, f = map(int, sys.argv[1:4])
RidgeReadout(50).fit(torch.randn(80, 50), torch.randn(80, 3), alphas=[1.0], rescale=True)  # LAPACK loaded
gc.collect()
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS:")
x, y = torch.randn(n, f), torch.randn(n, 3)
dev_x, dev_y = torch.randn(m, f), torch.randn(m, 3)
RidgeReadout(f).fit(x, y, dev_x, dev_y, alphas=[1.0, 10.0], rescale=True)
print(status("VmHWM:") - before, RidgeReadout.fit_bytes(n, m, f)["total"])
"""


def measure(train: int, dev: int, features: int) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(train), str(dev), str(features)], check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[-2]), float(out[-1])


def main(argv: list[str]) -> int:
    shapes = [tuple(int(v) for v in argv[:3])] if argv else SHAPES
    print(f"{'train x features (dev)':<28}{'measured MB':>12}{'planned MB':>12}{'ratio':>8}")
    for train, dev, features in shapes:
        measured, planned = measure(train, dev, features)
        print(f"{f'{train} x {features} ({dev})':<28}{measured / 1e6:>12.1f}{planned / 1e6:>12.1f}"
              f"{measured / planned:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
