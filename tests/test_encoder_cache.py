"""train.cache_encoder_outputs: the frozen encoder's outputs kept per sample (tasks/encoder_cache.py)
give the rows, losses and training of an uncached run, and the encoder runs once per sample."""

from __future__ import annotations

import pytest
import torch

from llmasr.model import build_model
from tasks.encoder_cache import CACHE_DIR, EncoderCache
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


def test_rows_left_on_disk_serve_a_later_stage_of_the_same_encoder_shards_and_settings_only(model, tmp_path):
    """persist() writes the rows beside the stage folder; attach() in another stage reads them when
    the encoder's weights, the settings and the shard index are the same, and ignores them otherwise."""
    torch.manual_seed(1)
    feats = torch.randn(3, N_MELS, 120)  # (B, M, T)
    lengths = torch.tensor([120, 90, 60])
    index = tmp_path / "shards" / "index.json"
    index.parent.mkdir()
    index.write_text('{"shards": [{"path": "train-000000.tar", "sha256": "aa"}]}')
    settings = {"n_mels": N_MELS, "trim_padding": True}
    stage3 = tmp_path / "checkpoints" / "stage3"
    first = EncoderCache(CountingEncoder(model.encoder))
    assert first.attach(tmp_path / "checkpoints" / "stage2", index, settings) == 0  # nothing there yet
    assert not first.persist()  # nothing encoded: nothing written
    hidden, out_lengths = first(["a", "b", "c"], feats, lengths)
    assert first.persist()
    assert first.path.parent == tmp_path / "checkpoints" / CACHE_DIR

    later = EncoderCache(CountingEncoder(model.encoder))
    assert later.attach(stage3, index, settings) == 3
    again, again_lengths = later(["c", "a", "b"], feats[[2, 0, 1]], lengths[[2, 0, 1]])
    assert later.encoder.rows == 0 and later.encoded == 0 and not later.persist()
    assert torch.equal(again_lengths, out_lengths[[2, 0, 1]])
    torch.testing.assert_close(again, hidden[[2, 0, 1]][:, : again.shape[1]], rtol=0, atol=0)

    untrimmed = {**settings, "trim_padding": False}
    assert EncoderCache(CountingEncoder(model.encoder)).attach(stage3, index, untrimmed) == 0
    index.write_text('{"shards": [{"path": "train-000000.tar", "sha256": "bb"}]}')  # a rebuilt shard
    assert EncoderCache(CountingEncoder(model.encoder)).attach(stage3, index, settings) == 0
    index.write_text('{"shards": [{"path": "train-000000.tar", "sha256": "aa"}]}')
    with torch.no_grad():
        p = next(model.encoder.parameters())
        kept = p.clone()
        p.add_(1e-3)  # another encoder (e.g. another stage 1)
        try:
            assert EncoderCache(CountingEncoder(model.encoder)).attach(stage3, index, settings) == 0
        finally:
            p.copy_(kept)
    assert EncoderCache(CountingEncoder(model.encoder)).attach(stage3, index, settings) == 3
    # several processes: one file each
    ranked = EncoderCache(CountingEncoder(model.encoder))
    ranked.attach(tmp_path / "checkpoints" / "stage2", index, settings, rank=1, world=2)
    assert ranked.path.name.endswith(".rank1of2.pt")


def test_stage_2_trains_alike_with_the_cache_and_counts_no_encoder_flops_for_cached_rows(tmp_path):
    """Through the real trainer (torchrun, DeepSpeed ZeRO-2 on CPU): CTC-only steps then CTC + LLM
    steps, 3 passes over 4 samples, with and without the cache: the same losses; the cached run's
    model FLOPs drop once every sample has been seen."""
    from llmasr.tiny_models import tiny_setup as tiny_models
    from test_train import launch, records, stage_dir, train_config, write_run
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
    # the cached run left its 4 rows for stage 3, beside the stage folders; the plain run left none
    left = list((tmp_path / "work-True").rglob(f"{CACHE_DIR}/*.pt"))
    assert len(left) == 1 and left[0].parent.parent == stage_dir(tmp_path / "work-True", 2).parent
    assert len(torch.load(left[0], weights_only=True)["rows"]) == 4
    assert not list((tmp_path / "work-False").rglob(f"{CACHE_DIR}/*"))
