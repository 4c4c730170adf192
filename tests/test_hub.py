"""With no hub to reach, loading a hub id fails at once with one error that names the param and the id, after one
warning, instead of five retries a file (huggingface_hub's default)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.servers import free_port

CODE = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from multigeometry.models.backbones import load_backbone
try:
    load_backbone("text", "someorg/not-cached-model", where="model.text")
except Exception as e:
    print("ERROR", type(e).__name__, e)
    sys.exit(3)
"""


def test_an_unreachable_hub_gives_one_clear_error(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{free_port()}", HF_HOME=str(tmp_path / "hf"))  # nothing listens there
    done = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "ERROR HubUnavailable model.text.backbone='someorg/not-cached-model': not a catalogue name" in done.stdout
    assert done.stderr.count("cannot be reached") == 1 and "Retry" not in done.stderr, done.stderr
