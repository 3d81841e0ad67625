"""What training imports late must not draw from the global RNGs: a resumed run restores them, then
imports at another point of the stream than the uninterrupted run did (rich draws from Python's
``random`` at import; the evaluator once imported it at the first validation)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHECK = """
import importlib, random
import numpy as np, torch
import core.train.trainer  # what a training process has imported when it seeds

def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))

def seed():
    random.seed(0); np.random.seed(0); torch.manual_seed(0)

seed(); reference = draws()
seed()
for name in ("utils.dashboard", "utils.plots", "core.evaluation.evaluator", "core.train.selection"):
    importlib.import_module(name)  # imported by validation, reporting and checkpoint selection
assert draws() == reference, "a module imported after seeding drew from a global RNG"
print("ok")
"""


def test_modules_training_imports_late_draw_nothing_from_the_global_rngs():
    p = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]
