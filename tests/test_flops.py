"""tasks.flops (the trainer's model FLOPs and MFU) against torch's own FLOP counter on a real
forward + backward of each stage: the counter sees every matmul, conv and attention autograd runs,
so frozen parts' missing weight gradients and the no_grad encoder are measured, not assumed."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llmasr.model import WhisperStage1Head, apply_lora, build_model, set_trainable, whisper_labels
from tasks.flops import step_flops
from tiny_models import tiny_setup, whisper_tokenizer

B, MEL_FRAMES = 3, 301  # odd: the conv's stride-2 rounding is part of the count


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("tiny"))


def measured(step) -> int:
    """FLOPs of ``step`` as torch counts them; attention through SDPA's math kernel, whose matmuls the
    counter sees (the CPU's fused kernel is not in its table)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def features(n_mels: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, n_mels, MEL_FRAMES, generator=g), torch.full((B,), MEL_FRAMES)  # (B, M, T), (B,)


@pytest.mark.parametrize("stage", [2, 3])
def test_llmasr_step_flops_match_torch_count(setup, stage):
    torch.manual_seed(0)
    model = build_model(setup.config)
    if stage == 3:
        apply_lora(model, setup.config)
    set_trainable(model, stage)
    x, lengths = features(model.encoder.num_mel_bins)
    targets = model.encode_targets(["the cat sat on the mat"] * B)  # equal rows: nothing padded
    outs = []

    def step():
        out = model(x, lengths, targets)
        out.loss.backward()
        outs.append(out)

    got = measured(step)
    frames = (MEL_FRAMES - 1) // 2 + 1  # encoder frames per example
    positions = (
        frames // model.adapter.k
        + len(model.prompt.prefix_ids)
        + len(model.prompt.suffix_ids)
        + len(targets[0])
        + 1
    )
    logit_rows = outs[0].logits.shape[0] * outs[0].logits.shape[1]  # the scored columns only
    assert logit_rows < B * positions
    want = step_flops(model, stage)(B * frames, B * frames**2, B * positions, B * positions**2, logit_rows)
    assert want == pytest.approx(got, rel=0.005), (want, got)


def test_stage2_and_stage3_differ_by_the_lora_weights_only(setup):
    torch.manual_seed(0)
    model = build_model(setup.config)
    set_trainable(model, 2)
    s2 = step_flops(model, 2)
    apply_lora(model, setup.config)
    set_trainable(model, 3)
    s3 = step_flops(model, 3)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert s3.per_position - s2.per_position == 6 * lora  # the frozen base still costs 4N in both
    assert (s3.per_frame, s3.per_logit_row, s3.per_frame_pair) == (
        s2.per_frame,
        s2.per_logit_row,
        s2.per_frame_pair,
    )


def test_stage1_step_flops_match_torch_count(setup):
    head = WhisperStage1Head.from_pretrained(setup.whisper)
    set_trainable(head, 1)
    cfg = head.whisper.config
    labels = whisper_labels(
        whisper_tokenizer()(["hello world again"] * B)["input_ids"], cfg.decoder_start_token_id
    )
    x, lengths = features(cfg.num_mel_bins)
    got = measured(lambda: head(x, lengths, labels).backward())
    frames = (MEL_FRAMES - 1) // 2 + 1
    positions = labels.shape[1]  # the decoder runs on the labels shifted right
    want = step_flops(head, 1)(
        B * frames, B * frames**2, B * positions, B * positions**2, B * positions, B * positions * frames
    )
    assert want == pytest.approx(got, rel=0.005), (want, got)


def test_a_gpt2_style_llm_is_counted_too(setup):
    """Config names differ by family (GPT-2: n_embd, n_layer; wte for the embedding): the count holds."""
    from llmasr.model import LLMASRConfig

    gpt2 = {
        "model_type": "gpt2",
        "vocab_size": 50368,
        "n_embd": 64,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 1024,
    }
    cfg = LLMASRConfig.from_dict({**setup.config.to_dict(), "llm": gpt2})
    torch.manual_seed(0)
    model = build_model(cfg)
    set_trainable(model, 2)
    x, lengths = features(model.encoder.num_mel_bins)
    targets = model.encode_targets(["the cat sat on the mat"] * B)
    outs = []

    def step():
        outs.append(model(x, lengths, targets))
        outs[-1].loss.backward()

    got = measured(step)
    frames = (MEL_FRAMES - 1) // 2 + 1
    positions = (
        frames // model.adapter.k
        + len(model.prompt.prefix_ids)
        + len(model.prompt.suffix_ids)
        + len(targets[0])
        + 1
    )
    rows = outs[0].logits.shape[0] * outs[0].logits.shape[1]
    want = step_flops(model, 2)(B * frames, B * frames**2, B * positions, B * positions**2, rows)
    assert want == pytest.approx(got, rel=0.005), (want, got)


@pytest.mark.parametrize("cached", [False, True])
def test_a_ctc_only_step_counts_the_ctc_head_and_no_cached_encoder(setup, cached):
    """Stage 2's CTC-only step (train.ctc_align_steps): encoder (forward, unless its output comes from
    tasks.encoder_cache), adapter and the CTC head over the LLM's embeddings; the LLM does not run."""

    from tasks.encoder_cache import EncoderCache

    torch.manual_seed(0)
    model = build_model(setup.config.model_copy(update={"adapter_norm": True, "ctc_compress": True}))
    set_trainable(model, 2)
    x, lengths = features(model.encoder.num_mel_bins)
    targets = model.encode_targets(["the cat sat"] * B)
    # not counted
    encoded = EncoderCache(model.encoder)([str(i) for i in range(B)], x, lengths) if cached else None

    def step():
        model(x, lengths, targets, ctc_only=True, encoded=encoded).loss.backward()

    got = measured(step)
    frames = (MEL_FRAMES - 1) // 2 + 1
    skipped = B * frames if cached else 0
    f = step_flops(model, 2)
    want = f(
        B * frames,
        B * frames**2,
        0,
        0,
        0,
        adapter_frames=B * (frames // f.k),
        cached_frames=skipped,
        cached_frames_sq=skipped * frames,
    )
    assert want == pytest.approx(got, rel=0.005), (want, got)
