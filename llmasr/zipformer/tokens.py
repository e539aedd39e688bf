"""BPE tokens of the Zipformer-Transducer: a sentencepiece model trained on the kept training
transcripts, as icefall's recipes train theirs (``<blk>`` is id 0, the transducer's blank).

    from llmasr.zipformer.tokens import train_bpe, BPE
    train_bpe(texts, "checkpoints/zipformer/bpe.model", vocab_size=500)
    bpe = BPE("checkpoints/zipformer/bpe.model")
    ids = bpe.encode("The patient.")       # [ids >= 1]; bpe.decode(ids) -> "The patient."

Texts are kept as written (case and punctuation are tokens too): O-WER scores them, and the
pseudo-labels the LLM-ASR learns from carry them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from llmasr.atomic import atomic_path

BLANK = "<blk>"


def train_bpe(texts: Sequence[str], path: str | Path, vocab_size: int) -> Path:
    """Train a BPE model of at most ``vocab_size`` pieces (fewer when the texts have fewer: a tiny
    corpus) on ``texts``; written atomically to ``path``."""
    import sentencepiece as spm

    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise ValueError("no training transcripts to train the BPE model on")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small corpus yields fewer pieces than asked; never an error
        character_coverage=1.0,
        user_defined_symbols=[BLANK],  # id 0 after the control symbols are moved (below)
        unk_id=1,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        input_sentence_size=1_000_000,
        shuffle_input_sentence=False,  # every sentence is read (input_sentence_size): order is moot
        num_threads=1,
        minloglevel=2,
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(model.getvalue())
    return path


class BPE:
    """A trained BPE model: text <-> token ids (``<blk>`` = 0 is never produced by ``encode``)."""

    def __init__(self, path: str | Path) -> None:
        import sentencepiece as spm

        self.path = Path(path)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        if self.sp.piece_to_id(BLANK) != 0:
            raise ValueError(f"{self.path}: {BLANK} is not id 0 (not a model train_bpe wrote)")

    @property
    def vocab_size(self) -> int:
        return int(self.sp.get_piece_size())

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text.strip()))

    def __call__(self, text: str) -> list[int]:
        return self.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.sp.decode([int(i) for i in ids if int(i) != 0]))
