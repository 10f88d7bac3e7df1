"""`python -m build` makes an sdist and a wheel holding the typed package and the script."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from conftest import REPO

HERE = Path(__file__).resolve().parents[1]


def test_build_makes_sdist_and_wheel_with_the_script_and_types(tmp_path: Path) -> None:
    # --no-isolation: the pinned hatchling of requirements-dev.txt, no download.
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path), str(HERE)],
        check=True, capture_output=True, timeout=300,
    )
    wheel = tmp_path / "taskstream-0.1.0-py3-none-any.whl"
    sdist = tmp_path / "taskstream-0.1.0.tar.gz"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert {"taskstream/__init__.py", "taskstream/py.typed", "taskstream/publish.lua",
                "taskstream/celery.py", "taskstream/django.py", "taskstream/channels.py"} <= names
        assert z.read("taskstream/publish.lua") == (REPO / "sidecar/src/broker/publish.lua").read_bytes()
        metadata = z.read("taskstream-0.1.0.dist-info/METADATA").decode()
        requires = [l for l in metadata.splitlines() if l.startswith("Requires-Dist:")]
        # redis-py is the one required dependency; Celery, Django and channels are extras.
        assert [r for r in requires if "extra ==" not in r] == ["Requires-Dist: redis>=5.0.1"]
        assert "Requires-Dist: channels>=4.0; extra == 'channels'" in requires
    with tarfile.open(sdist) as t:
        assert "taskstream-0.1.0/src/taskstream/publish.lua" in t.getnames()
