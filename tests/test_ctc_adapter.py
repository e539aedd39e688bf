"""The adapter's CTC head over the LLM's token embeddings (train.ctc_compress / adapter_norm /
ctc_weight / ctc_align_steps / ctc_vocab): compression rule, losses, norm, round trip, and a stage-2 run."""

from __future__ import annotations

import json

import pytest
import torch

from llmasr.model import LLMASR, Adapter, ModelSettingError, build_model, load_adapter, save_adapter
from tiny_models import tiny_setup

N_MELS = 80


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def model(setup) -> LLMASR:
    torch.manual_seed(0)
    return build_model(setup.config.model_copy(update={"adapter_norm": True, "ctc_compress": True}))


def one_hot_logits(labels: list[int], classes: int) -> torch.Tensor:
    """(S,) best labels -> (1, S, classes) logits whose argmax is each label."""
    logits = torch.zeros(1, len(labels), classes)
    logits[0, torch.arange(len(labels)), torch.tensor(labels)] = 5.0
    return logits


def test_compress_keeps_one_mean_frame_per_run_of_a_label():
    blank = 3  # classes 0..2 are tokens, 3 is the blank
    labels = [0, 0, blank, 1, blank, blank, 1, 2, 2, blank]
    # (1, 10, 2): frame j holds j
    speech = torch.arange(10, dtype=torch.float32)[None, :, None].repeat(1, 1, 2)
    out, lengths = Adapter.compress(speech, torch.tensor([10]), one_hot_logits(labels, 4))
    # runs: frames {0,1} (label 0), {3} (1), {6} (1 again after a blank: a new token), {7,8} (2)
    assert lengths.tolist() == [4]
    assert out[0, :, 0].tolist() == [0.5, 3.0, 6.0, 7.5]


def test_compress_ignores_padding_and_never_empties_a_row():
    blank = 2
    # (2, 4, 3)
    logits = torch.cat([one_hot_logits([0, blank, 1, 1], 3), one_hot_logits([blank, blank, blank, 0], 3)])
    logits[1, 1, 1] = 4.0  # the all-blank row's frame most sure of a token: 1 (frame 3 is padding)
    speech = torch.arange(8, dtype=torch.float32).reshape(2, 4, 1)
    out, lengths = Adapter.compress(speech, torch.tensor([4, 3]), logits)
    assert lengths.tolist() == [2, 1]
    assert out[0, :2, 0].tolist() == [0.0, 2.5]
    assert out[1, 0, 0].item() == 5.0  # row 1, frame 1


def test_adapter_norm_puts_every_frame_at_the_llm_embedding_norm(model):
    target = model.llm.get_input_embeddings().weight.norm(dim=-1).mean().item()
    speech, _ = model.adapter(torch.randn(2, 12, model.encoder.d_model))
    assert model.adapter.norm_to == pytest.approx(target, rel=1e-5)
    assert torch.allclose(speech.norm(dim=-1), torch.full(speech.shape[:2], target), rtol=1e-4)


def test_losses_ctc_only_and_weighted(model):
    torch.manual_seed(1)
    feats = torch.randn(2, N_MELS, 200)  # 2 s: 100 encoder frames, 25 adapter frames at k=4... or 50 at k=2
    lengths = torch.tensor([200, 160])
    targets = model.encode_targets(["the cat sat", "a dog"])
    only = model(feats, lengths, targets, ctc_only=True)
    assert only.logits.shape[1] == 0 and torch.isfinite(only.loss) and only.loss > 0
    assert only.speech_lengths.tolist() == [0, 0]  # the LLM did not run
    plain = model(feats, lengths, targets)
    both = model(feats, lengths, targets, ctc_weight=0.5)
    assert both.loss.item() == pytest.approx(plain.loss.item() + 0.5 * only.loss.item(), rel=1e-5)
    # the LLM read the compressed frames: never more than the adapter made
    made = model.adapter.output_lengths((lengths - 1) // 2 + 1)
    assert all(1 <= s <= m for s, m in zip(plain.speech_lengths.tolist(), made.tolist()))
    only.loss.backward()
    assert model.adapter.ctc_blank.grad is not None and model.adapter.linear1.weight.grad.abs().sum() > 0


def test_ctc_loss_without_a_head_is_refused(setup):
    plain = build_model(setup.config)
    with pytest.raises(ValueError, match="ctc_compress"):
        plain(torch.randn(1, N_MELS, 100), None, [[1, 2]], ctc_only=True)


def test_round_trip_keeps_head_and_compression(model, setup, tmp_path):
    with torch.no_grad():
        model.adapter.ctc_blank.normal_()
    path = save_adapter(model.adapter, tmp_path / "proj")
    assert json.loads((path / "adapter.json").read_text())["ctc"] is True
    loaded = load_adapter(path)
    assert loaded.norm_to == model.adapter.norm_to and loaded.ctc
    rebuilt = build_model(
        setup.config.model_copy(
            update={"adapter_norm": True, "ctc_compress": True, "adapter_path": str(path)}
        ),
        tokenizer=model.tokenizer,
    )
    feats = torch.randn(2, N_MELS, 150)
    with torch.no_grad():
        a, la = model.speech_embeds(feats)
        b, lb = rebuilt.speech_embeds(feats)
    assert torch.equal(la, lb) and torch.allclose(a, b)
    # settings that contradict the trained adapter name the first setting (the trainer: train.<key>)
    trained = setup.config.model_copy(
        update={"adapter_path": str(path), "adapter_norm": True, "ctc_compress": True}
    )
    for key, update in (("adapter_norm", {"adapter_norm": False}), ("ctc_compress", {"ctc_compress": False})):
        with pytest.raises(
            ModelSettingError, match=f"was trained with {key}=True, the settings say False"
        ) as info:
            build_model(trained.model_copy(update=update), tokenizer=model.tokenizer)
        assert info.value.key == key


def test_config_refuses_align_steps_without_a_head():
    from llmasr.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="ctc_compress"):
        load_config(profile="demo", overrides=["train.ctc_align_steps=10"])
    assert (
        load_config(
            profile="demo", overrides=["train.ctc_align_steps=10", "train.ctc_compress=true"]
        ).train.ctc_align_steps
        == 10
    )


def test_stage_2_aligns_with_ctc_then_stages_2_and_3_train_and_decode(tmp_path):
    """Through the real trainer (torchrun, DeepSpeed ZeRO-2 on CPU): stage 2's first steps are CTC-only
    (the LLM never runs: no decoder positions), then CTC + LLM loss; stage 3 keeps the head; the export
    decodes with compression."""
    from llmasr.tiny_models import tiny_setup as tiny_models
    from tasks.checkpoints import load_llmasr, stage_dir
    from test_train import launch, records, train_config, write_run
    from test_train_data import SENTENCES, make_shards

    tiny = tiny_models(tmp_path / "models", vocab_size=512, llm_init_std=0.3)
    index = make_shards(tmp_path / "data", {"train": SENTENCES[:4]}, per_shard=2)
    work = tmp_path / "work"
    train = train_config(tiny, adapter_norm=True, ctc_compress=True, ctc_align_steps=3, ctc_weight=0.5,
                         val_every=1000, ctc_vocab="transcripts")  # fmt: skip
    launch(write_run(work, 2, train, index, max_steps=5), train)
    launch(write_run(work, 3, train, index, max_steps=2), train)
    stage2 = [r for r in records(work) if r.get("stage") == 2 and "loss" in r]
    assert [r["step"] for r in stage2] == [1, 2, 3, 4, 5]
    assert all(r["decoder_positions_per_s"] == 0 for r in stage2[:3])  # CTC-only: the LLM did not run
    assert all(r["decoder_positions_per_s"] > 0 for r in stage2[3:])
    adapter = json.loads((stage_dir(work, 2) / "adapter" / "adapter.json").read_text())
    assert adapter["ctc"] is True
    model = load_llmasr(stage_dir(work, 3))
    assert model.adapter.ctc and model.adapter.norm_to
    # ctc_vocab: transcripts -- the head spells the shards' transcripts' tokens, kept through stage 3
    spoken = {t for row in model.encode_targets(SENTENCES[:4]) for t in row}
    assert adapter["ctc_vocab"] == len(spoken) < len(model.tokenizer)
    assert set(model.adapter.ctc_tokens.tolist()) == spoken
    texts = model.generate(torch.randn(2, N_MELS, 300), torch.tensor([300, 200]), max_new_tokens=4)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_a_restricted_head_spells_only_its_tokens_and_round_trips(model, setup, tmp_path):
    """train.ctc_vocab: transcripts -- logits over the kept tokens + blank; targets map to the head's
    classes (tokens it cannot spell are left out); save/load keeps the token list."""
    targets = model.encode_targets(["the cat sat", "a dog"])
    kept = sorted({t for row in targets for t in row})
    speech = torch.randn(2, 20, model.adapter.d_llm)
    embeddings = model.llm.get_input_embeddings().weight
    full = model.adapter.ctc_logits(speech, embeddings)  # (2, 20, V + 1)
    model.adapter.restrict_ctc(kept + kept[:1])  # duplicates collapse
    restricted = model.adapter.ctc_logits(speech, embeddings)  # (2, 20, V' + 1)
    assert restricted.shape == (2, 20, len(kept) + 1)
    torch.testing.assert_close(restricted[..., :-1], full[..., kept])
    torch.testing.assert_close(restricted[..., -1], full[..., -1])
    lengths = torch.tensor([20, 20])
    loss = model.ctc_loss((restricted, lengths), targets)
    # an unspellable token
    unseen = model.ctc_loss((restricted, lengths), [row + [max(kept) + 1] for row in targets])
    assert torch.isfinite(loss) and torch.equal(loss, unseen)
    save_adapter(model.adapter, tmp_path / "p")
    assert json.loads((tmp_path / "p" / "adapter.json").read_text())["ctc_vocab"] == len(kept)
    loaded = load_adapter(tmp_path / "p")
    assert loaded.ctc_tokens.tolist() == kept


def test_config_refuses_a_ctc_vocabulary_without_a_head():
    from llmasr.config import TrainConfig

    with pytest.raises(ValueError, match="train.ctc_compress=true or train.ctc_vocab=llm"):
        TrainConfig(ctc_vocab="transcripts")
