"""train.cache_encoder_outputs: the frozen encoder's outputs kept per sample (tasks/encoder_cache.py)
give the rows, losses and training of an uncached run, and the encoder runs once per sample."""

from __future__ import annotations

import pytest
import torch

from llmasr.model import build_model
from tasks.encoder_cache import EncoderCache
from tiny_models import tiny_setup

N_MELS = 80


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    setup = tiny_setup(tmp_path_factory.mktemp("tiny"))
    torch.manual_seed(0)
    m = build_model(setup.config.model_copy(update={"adapter_norm": True, "ctc_compress": True}))
    return m.eval()


class CountingEncoder(torch.nn.Module):
    """The model's encoder, counting the rows it is asked to encode."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder, self.rows = encoder, 0

    def forward(self, features, lengths):
        self.rows += features.shape[0]
        return self.encoder(features, lengths)


def alone(model, features: torch.Tensor, length: int) -> torch.Tensor:
    """One utterance's encoder output, encoded by itself: (T', D)."""
    with torch.no_grad():
        hidden, lengths = model.encoder(features[None, :, :length], torch.tensor([length]))
    return hidden[0, : int(lengths[0])]


def test_rows_match_encoding_each_utterance_alone_in_any_batch(model):
    torch.manual_seed(1)
    lengths = {"a": 300, "b": 180, "c": 240}
    feats = {k: torch.randn(N_MELS, n) for k, n in lengths.items()}

    def batch(keys):
        width = max(lengths[k] for k in keys)
        x = torch.zeros(len(keys), N_MELS, width)
        for i, k in enumerate(keys):
            x[i, :, : lengths[k]] = feats[k]
        return x, torch.tensor([lengths[k] for k in keys])

    counting = CountingEncoder(model.encoder)
    cache = EncoderCache(counting)
    hidden, out_lengths = cache(["a", "b"], *batch(["a", "b"]))  # (2, 150, D)
    assert cache.fresh == [True, True] and counting.rows == 2
    assert out_lengths.tolist() == [150, 90]
    for i, k in enumerate(["a", "b"]):
        torch.testing.assert_close(
            hidden[i, : out_lengths[i]], alone(model, feats[k], lengths[k]), rtol=1e-5, atol=1e-5
        )
    assert hidden[1, 90:].abs().sum() == 0  # padding past the row's length

    hidden2, lengths2 = cache(["c", "b"], *batch(["c", "b"]))  # b again, batched with another utterance
    assert cache.fresh == [True, False] and counting.rows == 3  # only c was encoded
    assert lengths2.tolist() == [120, 90]
    assert torch.equal(hidden2[1, :90], hidden[1, :90])
    torch.testing.assert_close(hidden2[0, :120], alone(model, feats["c"], lengths["c"]), rtol=1e-5, atol=1e-5)
    assert cache.nbytes == (150 + 90 + 120) * model.encoder.d_model * 4


def test_a_batch_with_a_key_twice_is_refused(model):
    with pytest.raises(ValueError, match="duplicate sample keys"):
        EncoderCache(model.encoder)(["a", "a"], torch.randn(2, N_MELS, 100), torch.tensor([100, 100]))


def test_forward_on_cached_outputs_gives_the_same_loss(model):
    torch.manual_seed(2)
    feats, lengths = torch.randn(2, N_MELS, 320), torch.tensor([320, 256])
    targets = model.encode_targets(["hello there", "a test"])
    cache = EncoderCache(model.encoder)
    with torch.no_grad():
        plain = model(feats, lengths, targets, ctc_weight=0.5)
        cached = model(feats, lengths, targets, ctc_weight=0.5, encoded=cache(["x", "y"], feats, lengths))
        again = model(feats, lengths, targets, ctc_weight=0.5, encoded=cache(["x", "y"], feats, lengths))
    torch.testing.assert_close(cached.loss, plain.loss, rtol=1e-5, atol=1e-5)
    assert torch.equal(again.loss, cached.loss)


def test_stage_2_trains_alike_with_the_cache_and_counts_no_encoder_flops_for_cached_rows(tmp_path):
    """Through the real trainer (torchrun, DeepSpeed ZeRO-2 on CPU): CTC-only steps then CTC + LLM
    steps, 3 passes over 4 samples, with and without the cache: the same losses; the cached run's
    model FLOPs drop once every sample has been seen."""
    from llmasr.tiny_models import tiny_setup as tiny_models
    from test_train import launch, records, train_config, write_run
    from test_train_data import SENTENCES, make_shards

    tiny = tiny_models(tmp_path / "models", vocab_size=512, llm_init_std=0.3)
    index = make_shards(tmp_path / "data", {"train": SENTENCES[:4]}, per_shard=2)
    runs = {}
    for cached in (False, True):
        work = tmp_path / f"work-{cached}"
        train = train_config(tiny, adapter_norm=True, ctc_compress=True, ctc_align_steps=2, ctc_weight=0.5,
                             val_every=1000, max_batch_size=2, cache_encoder_outputs=cached)  # fmt: skip
        launch(write_run(work, 2, train, index, max_steps=6), train)
        runs[cached] = [r for r in records(work) if r.get("stage") == 2 and "loss" in r]
    plain, cached = runs[False], runs[True]
    assert [r["step"] for r in cached] == [r["step"] for r in plain] == [1, 2, 3, 4, 5, 6]
    for p, c in zip(plain, cached):
        assert c["loss"] == pytest.approx(p["loss"], rel=1e-4, abs=1e-5)
    # 2 batches of 2 per pass: steps 1-2 encode every sample, steps 3-6 read them all from the cache
    per_sample = lambda r: r["model_tflops"] / r["samples_per_s"]  # noqa: E731 -- model TFLOPs per sample
    for p, c in zip(plain[:2], cached[:2]):
        assert per_sample(c) == pytest.approx(per_sample(p), rel=1e-6)
    for p, c in zip(plain[2:], cached[2:]):
        assert per_sample(c) < 0.9 * per_sample(p)
