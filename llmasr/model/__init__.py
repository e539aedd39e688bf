"""The LLM-ASR model: Whisper encoder -> frame-stacking adapter -> causal LM (DESIGN.md "Model").

Data flow and shapes (B = batch, M = mel bins, T = mel frames, D_enc = Whisper d_model,
D_llm = LLM hidden size, k = frames stacked by the adapter, default 2):

    input_features (B, M, T)  --SpeechEncoder-->  (B, T/2, D_enc)          [conv2 has stride 2]
                              --Adapter------->   (B, T/2//k, D_llm)       [k frames -> 1 embed]
    LLM inputs_embeds, one row per example:  [prefix | speech | suffix | target + EOS]
        prefix/suffix: the chat template's user turn split at the speech placeholder
        labels: -100 everywhere except the target tokens and EOS (loss on the target only)

One module a piece:

* ``config``: ``LLMASRConfig``, what a model is built from (defined torch-free in
  ``llmasr.config.model``; its settings and ``LoraConfig`` are the ``train.*`` keys), and ``torch_dtype``.
* ``features``: Whisper's log-mel (``LogMel``, ``log_mel``), one implementation for training and
  decoding.
* ``encoder``: ``SpeechEncoder`` runs any Whisper checkpoint's encoder, on the real length
  (``trim_padding``) or padded to 30 s; ``save_encoder``.
* ``adapter``: ``Adapter`` stacks k consecutive encoder frames, Linear -> activation -> Linear
  (kind "mlp") or one Linear (kind "linear"); an odd tail (T % k frames) is DROPPED, as SLAM-LLM
  does; optional CTC head and compression; ``save_adapter`` / ``load_adapter``.
* ``prompt``: the tokenizer and the prompt around the speech.
* ``errors``: ``ModelSettingError``, a part that cannot be built from its setting, naming it.
* ``llmasr``: ``LLMASR`` glues encoder + adapter + any ``AutoModelForCausalLM``; ``forward`` gives
  the loss, ``generate`` decoded text; ``build_model`` builds one from an ``LLMASRConfig``.
* ``lora``: LoRA via peft (stage 3).
* ``stage1``: stage 1 trains the encoder with Whisper's own decoder as the head
  (``WhisperStage1Head`` / ``stage1_loss``), through the same encoder forward LLMASR uses.
* ``trainable``: ``set_trainable`` picks each stage's parameters.

This package exports the names its users import; ``from llmasr.model import X`` is the way in.
"""

from llmasr.model.adapter import Adapter, load_adapter, save_adapter
from llmasr.model.config import LLMASRConfig, LoraConfig, local_source
from llmasr.model.encoder import SpeechEncoder, encode_whisper, save_encoder
from llmasr.model.errors import ModelSettingError, setting
from llmasr.model.features import HOP_LENGTH, N_FFT, LogMel, log_mel, mel_filters
from llmasr.model.llmasr import LLMASR, allow_cudnn_attention, build_llm, build_model, scored_positions
from llmasr.model.lora import apply_lora, has_lora, load_lora, merge_lora, save_lora
from llmasr.model.prompt import IGNORE_INDEX, build_prompt, build_tokenizer
from llmasr.model.stage1 import WhisperStage1Head, stage1_loss, whisper_labels
from llmasr.model.trainable import set_trainable

__all__ = [
    "HOP_LENGTH",
    "N_FFT",
    "IGNORE_INDEX",
    "LLMASR",
    "Adapter",
    "LLMASRConfig",
    "LogMel",
    "LoraConfig",
    "ModelSettingError",
    "SpeechEncoder",
    "WhisperStage1Head",
    "allow_cudnn_attention",
    "apply_lora",
    "build_llm",
    "build_model",
    "build_prompt",
    "build_tokenizer",
    "encode_whisper",
    "has_lora",
    "load_adapter",
    "load_lora",
    "log_mel",
    "local_source",
    "mel_filters",
    "merge_lora",
    "save_adapter",
    "save_encoder",
    "save_lora",
    "scored_positions",
    "set_trainable",
    "setting",
    "stage1_loss",
    "whisper_labels",
]
