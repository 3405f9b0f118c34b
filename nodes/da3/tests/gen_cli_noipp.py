"""Reference npz exports for the CLI fixture with OpenCV's IPP backend switched off.

The reference resizes with cv2.resize; the opencv-python wheels send INTER_CUBIC through Intel IPP
(float, CPU-dispatched), which differs from OpenCV's own fixed-point cubic on ~1-2% of pixels by
one level. The Rust port emulates OpenCV's own code bit-exactly, so for an exact end-to-end check
(tests/cli.rs) this regenerates fixtures/cli/results*.npz with cv2.ipp.setUseIPP(False) into
fixtures/cli/noipp/ (OPENCV_IPP=disabled). Run from the repository root with the reference venv:
    python nodes/da3/tests/gen_cli_noipp.py
"""
import os
import shutil
import sys
import tempfile
from pathlib import Path

# cv2.ipp.setUseIPP is per thread and the reference preprocesses in worker threads: disable IPP
# process-wide, before OpenCV initialises.
os.environ["OPENCV_IPP"] = "disabled"
import cv2  # noqa: E402
import numpy as np  # noqa: E402

root = Path(__file__).resolve().parents[3]
fixtures = root / "nodes/da3/tests/fixtures"
sys.path.insert(0, str(root / "scripts"))
import make_fixtures as mf  # noqa: E402

import tqdm  # noqa: E402

tqdm.tqdm.monitor_interval = 0  # fixture_cli joins new threads; tqdm's monitor never ends
assert not cv2.ipp.useIPP()
with tempfile.TemporaryDirectory() as td:
    td = Path(td)
    (td / "tiny-anyview").symlink_to(fixtures / "tiny-anyview")
    mf.fixture_cli(td)
    for i in range(3):
        a = np.asarray(cv2.imread(str(td / "cli" / f"view{i}.png")))
        b = np.asarray(cv2.imread(str(fixtures / "cli" / f"view{i}.png")))
        assert np.array_equal(a, b), f"view{i}.png differs from the committed one"
    out = fixtures / "cli" / "noipp"
    out.mkdir(exist_ok=True)
    for name in ("results.npz", "results_cam.npz"):
        shutil.copy(td / "cli" / name, out / name)
    assert not cv2.ipp.useIPP()
print("wrote", out)
