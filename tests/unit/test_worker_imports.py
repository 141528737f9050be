"""What an events worker loads: its memory is a deployment's largest per-process cost."""

import subprocess
import sys
from pathlib import Path


def test_an_events_worker_loads_no_training_or_model_library() -> None:
    # workers.tasks is what every worker process imports; the libraries of training and of
    # the model load only where a training or an encode runs.
    code = ("import sys, workers.tasks; print(sorted(m for m in ('scipy', 'implicit', "
            "'gensim', 'torch', 'onnxruntime', 'sentence_transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
