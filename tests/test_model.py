"""Tests of llmasr.model on tiny random models (fp32, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, WhisperForConditionalGeneration, WhisperModel

from llmasr.model import (
    IGNORE_INDEX,
    LLMASR,
    Adapter,
    LLMASRConfig,
    ModelSettingError,
    SpeechEncoder,
    WhisperStage1Head,
    apply_lora,
    build_model,
    build_prompt,
    build_tokenizer,
    load_adapter,
    load_lora,
    merge_lora,
    save_adapter,
    save_encoder,
    save_lora,
    set_trainable,
    stage1_loss,
    whisper_labels,
)
from tiny_models import tiny_setup, tiny_tokenizer, whisper_tokenizer

N_MELS = 80


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def model(setup) -> LLMASR:
    torch.manual_seed(0)
    return build_model(setup.config)


def mel(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, N_MELS, frames, generator=g)  # (B, M, T)


# ----------------------------------------------------------------------------- adapter


def test_adapter_even_and_odd_frames():
    proj = Adapter(d_enc=8, d_llm=16, hidden=12, k=2)
    x = torch.randn(3, 8, 8)  # (B, T=8, D_enc)
    y, lens = proj(x, torch.tensor([8, 7, 1]))
    assert y.shape == (3, 4, 16)
    assert lens.tolist() == [4, 3, 0]  # floor(len / k)

    y7, lens7 = proj(x[:, :7], torch.tensor([7, 7, 7]))  # odd T=7 -> 3 frames, the 7th dropped
    assert y7.shape == (3, 3, 16) and lens7.tolist() == [3, 3, 3]
    assert torch.allclose(y7, y[:, :3])  # dropping the tail leaves the first pairs unchanged

    # Frame pairs are stacked in time order: output 0 only depends on frames 0 and 1.
    x2 = x.clone()
    x2[:, 2:] += 1.0
    assert torch.allclose(proj(x2)[0][:, 0], y[:, 0])
    assert not torch.allclose(proj(x2)[0][:, 1], y[:, 1])


def test_adapter_config_errors():
    with pytest.raises(ValueError, match="activation"):
        Adapter(8, 16, activation="swishy")
    with pytest.raises(ValueError, match="k must be"):
        Adapter(8, 16, k=0)
    with pytest.raises(ValueError, match="encoder width 8"):
        Adapter(8, 16)(torch.randn(1, 4, 10))


# ------------------------------------------------------------------------------- encoder


def test_encoder_trimmed_and_padded_shapes(setup):
    enc = SpeechEncoder.from_pretrained(setup.whisper, trim_padding=True)
    x = mel(2, 500)  # 5 s
    h, lens = enc(x, torch.tensor([500, 321]))
    assert h.shape == (2, 250, enc.d_model)
    assert lens.tolist() == [250, 161]  # ceil(L / 2)

    h_odd, lens_odd = enc(mel(1, 7))  # odd T: one zero frame padded -> ceil(7/2) = 4
    assert h_odd.shape == (1, 4, enc.d_model) and lens_odd.tolist() == [4]

    enc.trim_padding = False
    h_pad, lens_pad = enc(x, torch.tensor([500, 321]))
    assert h_pad.shape == (2, enc.max_frames // 2, enc.d_model)  # 3000 mel frames -> 1500
    assert lens_pad.tolist() == [250, 161]


def test_trimmed_equals_stock_at_full_length(setup):
    enc = SpeechEncoder.from_pretrained(setup.whisper, trim_padding=True).eval()
    x = mel(2, enc.max_frames)  # exactly 2*max_source_positions frames
    with torch.no_grad():
        ours, _ = enc(x)
        stock = enc.encoder(x).last_hidden_state  # HF's WhisperEncoder.forward
    assert ours.shape == stock.shape
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-5)


def test_trimmed_batch_matches_solo_runs(setup):
    """Masking + zeroed tails: an example's valid frames do not depend on its batch mates."""
    enc = SpeechEncoder.from_pretrained(setup.whisper).eval()
    x = mel(2, 400)
    lengths = torch.tensor([400, 253])
    with torch.no_grad():
        batch, lens = enc(x, lengths)
        solo0, _ = enc(x[:1])
        solo1, _ = enc(x[1:, :, :253])
    torch.testing.assert_close(batch[0], solo0[0], atol=1e-5, rtol=1e-5)
    n1 = int(lens[1])
    assert solo1.shape[1] == n1 == 127
    torch.testing.assert_close(batch[1, :n1], solo1[0], atol=1e-5, rtol=1e-5)


def test_encoder_input_errors(setup):
    enc = SpeechEncoder.from_pretrained(setup.whisper)
    with pytest.raises(ValueError, match="expects 80 mel bins, got 128"):
        enc(torch.randn(1, 128, 100))
    with pytest.raises(ValueError, match="more than this encoder"):
        enc(mel(1, enc.max_frames + 2))
    with pytest.raises(ValueError, match="feature_lengths"):
        enc(mel(1, 10), torch.tensor([11]))


# ------------------------------------------------------------------------- prompt / loss


def test_prompt_layout_chat_and_plain(setup, tmp_path):
    tok = build_tokenizer(setup.tokenizer)
    layout = build_prompt(tok, "Transcribe the audio.")
    assert layout.chat_template
    assert tok.decode(layout.prefix_ids) == "<|im_start|>user\nTranscribe the audio.\n"
    assert tok.decode(layout.suffix_ids) == "<|im_end|>\n<|im_start|>assistant\n"

    plain = build_tokenizer(tiny_tokenizer(tmp_path / "plain", chat_template=False))
    layout = build_prompt(plain, "Transcribe the audio.")
    assert not layout.chat_template
    assert plain.decode(layout.prefix_ids) == "Transcribe the audio.\nAudio: "
    assert plain.decode(layout.suffix_ids) == "\nTranscript:\n"


def test_loss_on_target_tokens_only(model):
    x, lengths = mel(2, 300), torch.tensor([300, 180])
    targets = model.encode_targets(["hello world", "the cat sat on the mat"])
    out = model(x, lengths, targets)

    # Exactly the target tokens + EOS are labelled, in order; everything else is -100.
    for row, target in zip(out.labels, targets):
        assert row[row != IGNORE_INDEX].tolist() == target + [model.eos_id]
    # Each example's labels sit at the end of its valid (unpadded) span: right padding.
    for row, mask in zip(out.labels, out.attention_mask):
        last = int(mask.sum()) - 1
        assert int(row[last]) == model.eos_id and bool((row[last + 1 :] == IGNORE_INDEX).all())

    # Logits exist only where the loss looks: every scored (shifted) label has its position, and the
    # positions are fewer than the sequence (prompt and speech never reach the vocabulary projection).
    assert model.slice_logits
    pos = out.logit_positions
    scored = (out.labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)[1]
    assert set(scored.tolist()) == set(pos.tolist()) and len(pos) < out.labels.shape[1] - 1
    assert out.logits.shape[:2] == (2, len(pos))
    # They equal the full forward's logits there, and the loss equals HF's own causal-LM loss over
    # every position with the same labels.
    embeds, mask, labels = model._assemble(*model.speech_embeds(x, lengths), targets, left_pad=False)
    full = model.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.logits, full.logits[:, pos], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, full.loss, atol=1e-5, rtol=1e-5)
    # Manual CE over the (shifted) target positions equals the model's loss.
    logits = full.logits[:, :-1].reshape(-1, full.logits.shape[-1])
    labels = out.labels[:, 1:].reshape(-1)
    keep = labels != IGNORE_INDEX
    manual = F.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, manual, atol=1e-5, rtol=1e-5)

    # Labelling the prompt too would give a different number: the prompt is really masked.
    with_prompt = out.labels.clone()
    ids = torch.tensor(model.prompt.prefix_ids)
    with_prompt[:, : len(ids)] = ids
    wl = with_prompt[:, 1:].reshape(-1)
    k2 = wl != IGNORE_INDEX
    assert not torch.isclose(F.cross_entropy(logits[k2], wl[k2]), out.loss)


def test_mismatched_dims_raise_clear_errors(setup):
    model = build_model(setup.config)
    with pytest.raises(ValueError, match="adapter output dim 32 != LLM hidden size 64"):
        LLMASR(model.encoder, Adapter(64, 32, hidden=8), model.llm, model.tokenizer)
    with pytest.raises(ValueError, match="adapter input width 48 != encoder d_model 64"):
        LLMASR(model.encoder, Adapter(48, 64, hidden=8), model.llm, model.tokenizer)


# ------------------------------------------------------------------------- trainable sets


def test_stage_trainable_sets(model, setup):
    names = set(set_trainable(model, 1))
    assert names and all(n.startswith("encoder.") for n in names)
    assert not any("embed_positions" in n for n in names)

    names = set(set_trainable(model, 2))
    assert names == {n for n, _ in model.adapter.named_parameters(prefix="adapter")}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == names

    with pytest.raises(ValueError, match="apply_lora"):
        set_trainable(model, 3)
    apply_lora(model, setup.config)
    names = set(set_trainable(model, 3))
    lora = {n for n in names if "lora_" in n}
    assert lora and all(n.startswith("llm.") for n in lora)
    assert names - lora == {n for n, _ in model.adapter.named_parameters(prefix="adapter")}

    head = WhisperStage1Head.from_pretrained(setup.whisper)
    names = set(set_trainable(head, 1))
    assert names and all(n.startswith("whisper.model.encoder.") for n in names)
    with pytest.raises(ValueError, match="stage 1 only"):
        set_trainable(head, 2)


def test_stage2_step_changes_only_adapter(model):
    set_trainable(model, 2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # all params on purpose
    out = model(mel(2, 200), torch.tensor([200, 150]), model.encode_targets(["one two", "three"]))
    out.loss.backward()
    opt.step()
    for name, p in model.named_parameters():
        if name.startswith("adapter."):
            assert not torch.equal(p, before[name]), name
        else:
            assert p.grad is None, name
            assert torch.equal(p, before[name]), name


# ---------------------------------------------------------------------------- stage 1 head


def test_stage1_head_trains_encoder_used_by_llmasr(setup, tmp_path):
    head = WhisperStage1Head.from_pretrained(setup.whisper)
    set_trainable(head, 1)
    tok = whisper_tokenizer()
    labels = whisper_labels(
        tok(["hello world", "a cat"])["input_ids"], head.whisper.config.decoder_start_token_id
    )
    assert labels[0, 0].item() != head.whisper.config.decoder_start_token_id
    x, lengths = mel(2, 300), torch.tensor([300, 200])
    decoder_before = {n: p.detach().clone() for n, p in head.whisper.model.decoder.named_parameters()}
    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=0.1)
    loss = head(x, lengths, labels)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, stage1_loss(head.whisper, x, labels, lengths))
    loss.backward()
    opt.step()
    for n, p in head.whisper.model.decoder.named_parameters():
        assert torch.equal(p, decoder_before[n]), n

    head.save_pretrained(tmp_path / "stage1")
    enc = SpeechEncoder.from_pretrained(tmp_path / "stage1").eval()
    head.eval()
    with torch.no_grad():
        torch.testing.assert_close(enc(x, lengths)[0], head.speech_encoder()(x, lengths)[0])
    reloaded = WhisperForConditionalGeneration.from_pretrained(str(tmp_path / "stage1"))
    for n, p in head.whisper.named_parameters():
        assert torch.equal(p, dict(reloaded.named_parameters())[n]), n


# ----------------------------------------------------------------------------- save / load


def test_encoder_export_round_trip(model, tmp_path):
    save_encoder(model.encoder, tmp_path / "enc")
    want = model.encoder.encoder.state_dict()
    for cls in (WhisperModel, WhisperForConditionalGeneration):
        got = cls.from_pretrained(str(tmp_path / "enc")).get_encoder().state_dict()
        assert set(got) == set(want)
        for k in want:
            assert torch.equal(got[k], want[k]), (cls.__name__, k)


def test_adapter_round_trip(model, tmp_path):
    path = save_adapter(model.adapter, tmp_path / "proj")
    assert json.loads((path / "adapter.json").read_text())["d_llm"] == 64
    loaded = load_adapter(path)
    for k, v in model.adapter.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    cfg = LLMASRConfig.from_dict({**model_cfg_dict(model), "adapter_path": str(path)})
    rebuilt = build_model(cfg, tokenizer=model.tokenizer)
    assert torch.equal(rebuilt.adapter.linear1.weight, model.adapter.linear1.weight)


def model_cfg_dict(model: LLMASR) -> dict:
    return {
        "encoder": model.encoder.config.to_dict(),
        "llm": {**model.llm.config.to_dict()},
        "adapter_hidden": 32,
    }


def test_lora_adapter_and_merge_round_trip(model, setup, tmp_path):
    from peft import PeftModel

    apply_lora(model, setup.config)
    torch.manual_seed(1)
    for n, p in model.llm.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.1)  # make the adapter non-trivial (B starts at zero)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        want = model.llm(input_ids=ids).logits

    save_lora(model, tmp_path / "lora")
    base = AutoModelForCausalLM.from_pretrained(str(setup.llm))
    with torch.no_grad():
        got = PeftModel.from_pretrained(base, str(tmp_path / "lora"))(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    fresh = build_model(setup.config)
    load_lora(fresh, tmp_path / "lora")
    with torch.no_grad():
        torch.testing.assert_close(fresh.llm(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)

    merge_lora(model)
    model.llm.save_pretrained(str(tmp_path / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, want, atol=1e-4, rtol=1e-4)


def test_lora_bad_target_modules(model):
    from llmasr.model import LoraConfig

    with pytest.raises(ModelSettingError, match="not module names") as info:
        apply_lora(model, LoraConfig(target_modules=["query_key_value"]))
    assert info.value.key == "lora.target_modules"
    # a module of the LLM that peft cannot wrap (a whole MLP block): peft's refusal, named the same
    assert any(n.endswith(".mlp") for n, _ in model.llm.named_modules())
    with pytest.raises(ModelSettingError, match="not supported") as info:
        apply_lora(model, LoraConfig(target_modules=["mlp"]))
    assert info.value.key == "lora.target_modules"


def test_an_instruction_holding_the_speech_placeholder_names_its_setting(setup):
    with pytest.raises(ModelSettingError, match="exactly once") as info:
        build_model(setup.config.model_copy(update={"instruction": "Transcribe <speech> now."}))
    assert info.value.key == "instruction"


# ---------------------------------------------------------------------------- model.json


def test_a_model_json_an_earlier_version_wrote_loads():
    """Before LLMASRConfig derived from llmasr.config.ModelSettings, model.json named the adapter's
    frame stacking ``k``, and before the adapter's rename it was ``projector`` (``projector``,
    ``projector_hidden``, ``projector_path``); such a file loads, and writes back under today's names."""
    former = {
        "activation": "gelu",
        "adapter_norm": False,
        "ctc_compress": False,
        "dtype": "float32",
        "encoder": "/w/checkpoints/stage1/encoder",
        "instruction": "Transcribe the audio.",
        "k": 3,
        "llm": "/w/demo-models/llm",
        "llm_init": "pretrained",
        "llm_seed": 0,
        "lora": {
            "alpha": 16,
            "dropout": 0.0,
            "rank": 8,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        },
        "mask_padding": True,
        "projector": "mlp",
        "projector_hidden": 64,
        "projector_path": "/w/checkpoints/stage3/projector",
        "tokenizer": "/w/demo-models/tokenizer",
        "trim_padding": True,
        "trust_remote_code": False,
    }
    cfg = LLMASRConfig.from_dict(former)
    assert (cfg.downsample_k, cfg.lora.alpha, cfg.adapter_hidden) == (3, 16, 64)
    assert (cfg.adapter, cfg.adapter_path) == ("mlp", "/w/checkpoints/stage3/projector")
    now = cfg.to_dict()
    assert "k" not in now and now["downsample_k"] == 3
    assert not {k for k in now if k.startswith("projector")}
    assert LLMASRConfig.from_dict(now) == cfg
    renamed = {"k": "downsample_k", "projector": "adapter", "projector_hidden": "adapter_hidden"}
    renamed["projector_path"] = "adapter_path"
    assert now == {renamed.get(k, k): v for k, v in former.items()}
    with pytest.raises(ValueError, match="adapter_hiden"):
        LLMASRConfig.from_dict({**former, "adapter_hiden": 8})


def test_model_config_carries_every_model_setting_of_train(tmp_path):
    """tasks.checkpoints.model_config copies train's ModelSettings fields by name: a model knob added
    to ModelSettings reaches model.json with no mapping code; one LoRA default everywhere."""
    from llmasr.config import LoraConfig, ModelSettings, TrainConfig
    from tasks.checkpoints import model_config

    train = TrainConfig(
        adapter="linear",
        downsample_k=4,
        activation="silu",
        trim_padding=False,
        adapter_norm=True,
        ctc_compress=True,
        instruction="Write it down.",
        llm_init="random",
        trust_remote_code=True,
        lora=LoraConfig(rank=2, alpha=5, dropout=0.1, target_modules=["q_proj"]),
        seed=7,
    )
    cfg = model_config(train, tmp_path, 2)
    assert {n: getattr(cfg, n) for n in ModelSettings.model_fields} == {
        n: getattr(train, n) for n in ModelSettings.model_fields
    }
    assert (cfg.llm, cfg.tokenizer, cfg.llm_seed, cfg.adapter_path) == (train.llm, None, 7, None)
    assert LLMASRConfig(encoder="e", llm="l").lora == TrainConfig().lora == LoraConfig()


# -------------------------------------------------------------------------------- generate


def test_generate_batch_of_different_lengths(model):
    x, lengths = mel(2, 240), torch.tensor([240, 130])
    texts = model.generate(x, lengths, max_new_tokens=6)
    assert isinstance(texts, list) and len(texts) == 2 and all(isinstance(t, str) for t in texts)

    # Left padding is invisible: the shorter example, left-padded in the batch, gets the same
    # tokens and next-token scores as a solo run (checks the mask and position ids).
    kw = {"max_new_tokens": 3, "output_scores": True, "return_dict_in_generate": True}
    batch = model.generate_ids(x, lengths, **kw)
    solo = model.generate_ids(x[1:, :, :130], None, **kw)
    assert batch.sequences[1].tolist() == solo.sequences[0].tolist()
    for step_batch, step_solo in zip(batch.scores, solo.scores):
        torch.testing.assert_close(step_batch[1], step_solo[0], atol=1e-4, rtol=1e-4)

    beams = model.generate(x, lengths, max_new_tokens=4, num_beams=2, no_repeat_ngram_size=2)
    assert len(beams) == 2
    assert model.training  # generate restores the mode


def test_tokenizer_loads_with_autotokenizer(setup):
    tok = AutoTokenizer.from_pretrained(str(setup.tokenizer))
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert (
        tok("hello world", add_special_tokens=True)["input_ids"]
        == tok("hello world", add_special_tokens=False)["input_ids"]
    )
    assert Path(setup.tokenizer, "tokenizer_config.json").is_file()


# ------------------------------------------------------------------------- remote-code LLMs

REMOTE_CONFIG = """from transformers import Qwen2Config


class TinyRemoteConfig(Qwen2Config):
    model_type = "tinyremote"
"""
REMOTE_MODELING = """from transformers import Qwen2ForCausalLM

from .configuration_tinyremote import TinyRemoteConfig


class TinyRemoteForCausalLM(Qwen2ForCausalLM):
    config_class = TinyRemoteConfig
"""


def test_an_llm_with_its_own_code_needs_trust_remote_code(setup, tmp_path):
    """A checkpoint whose model type transformers does not ship (config.json ``auto_map`` -> code in
    the folder, as Qwen-7B-Chat's): refused unless ``trust_remote_code``, then built and run."""
    import shutil

    remote = tmp_path / "remote-llm"
    shutil.copytree(setup.llm, remote)
    (remote / "configuration_tinyremote.py").write_text(REMOTE_CONFIG)
    (remote / "modeling_tinyremote.py").write_text(REMOTE_MODELING)
    cfg_json = json.loads((remote / "config.json").read_text())
    cfg_json.update(
        model_type="tinyremote",
        architectures=["TinyRemoteForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_tinyremote.TinyRemoteConfig",
            "AutoModelForCausalLM": "modeling_tinyremote.TinyRemoteForCausalLM",
        },
    )
    (remote / "config.json").write_text(json.dumps(cfg_json))

    base = setup.config.to_dict()
    with pytest.raises(ModelSettingError, match="trust_remote_code") as info:
        build_model(LLMASRConfig.from_dict({**base, "llm": str(remote)}))
    assert info.value.key == "trust_remote_code"
    model = build_model(LLMASRConfig.from_dict({**base, "llm": str(remote), "trust_remote_code": True}))
    assert type(model.llm).__name__ == "TinyRemoteForCausalLM"
    texts = model.generate(mel(2, 120), torch.tensor([120, 90]), max_new_tokens=3)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


# ------------------------------------------------------------------------- logits at scored positions


def test_sliced_logits_train_exactly_as_full_logits(model, setup):
    """Training asks the LLM for logits at scored positions only (``logits_to_keep``); an LLM whose
    forward has no such argument (older remote code) gets logits everywhere.  Both give the same loss
    and the same LoRA and adapter gradients."""
    from transformers import Qwen2ForCausalLM

    class NoKeepLM(Qwen2ForCausalLM):  # an older forward: no logits_to_keep
        def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, **kwargs):
            return super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                labels=labels,
                **kwargs,
            )

    old_llm = NoKeepLM(model.llm.config)
    old_llm.load_state_dict(model.llm.state_dict())
    old = LLMASR(model.encoder, model.adapter, old_llm, model.tokenizer)
    apply_lora(model, setup.config)
    apply_lora(old, setup.config)
    old.llm.load_state_dict(model.llm.state_dict())  # the same LoRA init
    assert model.slice_logits and not old.slice_logits

    x, lengths = mel(3, 300), torch.tensor([300, 120, 211])  # odd frame count, different speech lengths
    targets = model.encode_targets(["hello world", "the cat sat on the mat", "a"])
    grads = []
    for m in (model, old):
        set_trainable(m, 3)
        m.zero_grad(set_to_none=True)
        out = m(x, lengths, targets)
        out.loss.backward()
        grads.append((out, {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}))
    (new_out, new_g), (old_out, old_g) = grads
    assert new_out.logits.shape[1] == len(new_out.logit_positions)
    assert old_out.logits.shape[1] == old_out.labels.shape[1]  # every position
    assert new_out.logits.shape[1] < old_out.labels.shape[1] // 2  # prompt + speech dominate the sequence
    torch.testing.assert_close(new_out.loss, old_out.loss, atol=1e-6, rtol=1e-6)
    assert (
        new_g.keys() == old_g.keys()
        and any("lora_B" in n for n in new_g)
        and any(n.startswith("adapter.") for n in new_g)
    )
    for n in new_g:
        torch.testing.assert_close(new_g[n], old_g[n], atol=1e-6, rtol=1e-5, msg=n)
