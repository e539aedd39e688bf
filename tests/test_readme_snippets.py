"""The README's snippets for loading each export run as written, against a real trained work dir.

Every ``<!-- snippet: NAME -->`` Python block of README.md is run in a fresh interpreter from a
folder outside the repository, ``runs/mine`` replaced by a work dir whose stages 1, 2 and 3 were
trained (1 step each, ``train.merge_lora`` on) by tasks/train.py as the flow launches it, beside a
real (espeak-ng) clip ``clip.flac``.  Checks appended to each block assert what it loaded.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.checkpoints import read_stage, stage_dir

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPET = re.compile(r"<!-- snippet: ([\w-]+) -->\n```python\n(.*?)```", re.S)

# what each block must have loaded, run after it in the same interpreter
CHECKS = {
    "export-stage1": """
assert features.shape[-1] == 3000
assert isinstance(processor.batch_decode(ids, skip_special_tokens=True)[0], str)
import torch
fc1 = "layers.0.fc1.weight"
assert torch.equal(encoder.state_dict()[fc1], whisper.get_encoder().state_dict()[fc1])
""",
    "export-adapter": """
assert embeds.shape == (1, 1500 // adapter.k, adapter.d_llm) and lengths.tolist() == [1500 // adapter.k]
""",
    "export-lora": """
trained = [n for n, p in llm.named_parameters() if "lora_B" in n and bool(p.abs().sum() > 0)]
assert trained, "the LoRA's B matrices start at zero: these were trained"
""",
    "export-merged": """
assert ids.shape[0] == 1 and ids.shape[1] > len(tokenizer("The patient")["input_ids"])
""",
    "export-llmasr": """
from tasks.checkpoints import load_llmasr
merged = load_llmasr("{stage3}", merged=True)
lengths = torch.tensor([features.shape[-1]])
generated = model.generate_ids(features, lengths, max_new_tokens=6)
assert generated.tolist() == merged.generate_ids(features, lengths, max_new_tokens=6).tolist()
""",
}


def snippets() -> dict[str, str]:
    return dict(SNIPPET.findall(README.read_text(encoding="utf-8")))


def test_every_export_has_a_snippet():
    assert sorted(snippets()) == sorted(CHECKS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(a work dir with stages 1-3 trained, a folder outside the repository with clip.flac)."""
    from llmasr.tiny_models import tiny_setup
    from test_train import launch, train_config, write_run
    from test_train_data import SENTENCES, _speak, make_shards

    root = tmp_path_factory.mktemp("trained")
    tiny = tiny_setup(root / "models", vocab_size=512, llm_init_std=0.3)
    index = make_shards(root / "data", {"train": SENTENCES[:2]}, per_shard=2)
    work = root / "work"
    train = train_config(tiny, val_every=1000, ckpt_every=1000, merge_lora=True)
    for stage in (1, 2, 3):
        launch(write_run(work, stage, train, index, max_steps=1), train)
        assert read_stage(stage_dir(work, stage))["steps"] == 1
    user = root / "elsewhere"
    user.mkdir()
    _speak("The patient was given two tablets of paracetamol.", user / "clip.flac")
    return work, user


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_the_readme_snippet_runs(name: str, trained):
    work, user = trained
    code = snippets()[name].replace("runs/mine", str(work))
    assert "runs/mine" not in code
    code += CHECKS[name].format(stage3=stage_dir(work, 3))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=user, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{name}:\n{code}\n{proc.stderr[-4000:]}"
    if name in ("export-stage1", "export-llmasr"):  # each prints the clip's transcript
        assert proc.stdout.strip(), proc.stdout
