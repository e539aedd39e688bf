"""llmasr.config: the YAML, the demo profile overlay, --set overrides and the errors users see."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from llmasr.config import (
    PATH_KEYS,
    ConfigError,
    DemoConfig,
    PipelineConfig,
    apply_override,
    cache_settings,
    load_config,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "pipeline_config.yaml"


def _load(**kw) -> PipelineConfig:
    return load_config(config_file=CONFIG, **kw)


def _error(**kw) -> str:
    with pytest.raises(ConfigError) as info:
        _load(**kw)
    assert not isinstance(info.value, pydantic.ValidationError)
    return str(info.value)


def _leaves(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _get(cfg: PipelineConfig, dotted: str) -> object:
    node: object = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


# --------------------------------------------------------------------------------------------------
# the shipped file


def test_every_key_of_the_shipped_file_is_known_and_taken_as_written() -> None:
    raw = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    profiles = raw.pop("profiles")
    base = _load()
    for key, value in _leaves(raw).items():  # paths are made absolute: tests/test_paths.py
        assert key in PATH_KEYS or _get(base, key) == value, key
    assert base.profile is None
    assert base.label.model == "large-v3"  # the paper's labeller at the top level

    demo = _load(profile="demo")
    for key, value in _leaves(profiles["demo"]).items():
        assert key in PATH_KEYS or _get(demo, key) == value, key
    # keys the profile does not mention keep the top level's values
    assert demo.filter.hallucination_phrases == raw["filter"]["hallucination_phrases"]
    assert demo.segment.max_segment_s == raw["segment"]["max_segment_s"]


def test_demo_profile_overlays_the_top_level() -> None:
    cfg = _load(profile="demo")
    assert cfg.label.model == "bundled:tiny.en"
    assert cfg.label.device == "cpu"
    assert cfg.profile == "demo"
    assert cfg.work_dir == str(REPO / "runs/demo")  # relative to the config file's folder
    # under the work dir
    assert cfg.demo is not None and cfg.demo.corpus_dir == str(REPO / "runs/demo/demo-corpus")
    assert cfg.shard.max_samples == 40
    # deep merge: the label section's other keys come from the top level
    assert cfg.label.language == "en"


def test_top_level_keyword_arguments_set_keys_and_none_is_ignored(tmp_path: Path) -> None:
    cfg = _load(profile="demo", work_dir=str(tmp_path), sources=None)
    assert cfg.work_dir == str(tmp_path)
    assert cfg.sources == [str(tmp_path / "demo-corpus" / "videos")]  # the corpus follows the work dir


# --------------------------------------------------------------------------------------------------
# --set overrides


def test_overrides_parse_yaml_values() -> None:
    cfg = _load(
        profile="demo",
        overrides=[
            "filter.max_caption_wer=0.15",
            "filter.require_caption=true",
            "filter.languages=[en, de]",
            "label.beam_size=2",
            "label.language=null",
            "ingest.caption_languages=[en-GB]",
        ],
    )
    assert cfg.filter.max_caption_wer == pytest.approx(0.15)
    assert cfg.filter.require_caption is True
    assert cfg.filter.languages == ["en", "de"]
    assert cfg.label.beam_size == 2
    assert cfg.label.language is None
    assert cfg.ingest.caption_languages == ["en-GB"]


def test_overrides_apply_after_the_profile_and_in_order() -> None:
    cfg = _load(
        profile="demo", overrides=["label.model=small.en", "shard.max_samples=7", "shard.max_samples=9"]
    )
    assert cfg.label.model == "small.en"
    assert cfg.shard.max_samples == 9


def test_with_overrides_equals_loading_with_them(tmp_path: Path, monkeypatch) -> None:
    """A loaded config with more settings (an ablation variant, a command's lists) is the config
    loading with them gives; its relative paths are the current folder's; errors name the key."""
    from llmasr.config import with_overrides

    monkeypatch.chdir(tmp_path)
    base = _load(profile="demo", overrides=["shard.max_samples=7"])
    more = ["train.stage3.lr=1e-3", "train.encoder=./enc"]
    assert with_overrides(base, more) == _load(profile="demo", overrides=["shard.max_samples=7", *more])
    assert with_overrides(base, more).train.encoder == str(tmp_path / "enc")
    lists = with_overrides(base, values={"eval.test_sets": ["a=b"], "eval.stages": [3], "eval.hyps": None})
    assert lists.eval.test_sets == [f"a={tmp_path / 'b'}"] and lists.eval.stages == [3]
    assert lists.eval.hyps == base.eval.hyps and base.eval.stages == [1, 2, 3]  # base unchanged
    with pytest.raises(ConfigError, match="train.projector was renamed train.adapter"):
        with_overrides(base, ["train.projector=linear"])
    with pytest.raises(ConfigError, match="eval.stages"):
        with_overrides(base, values={"eval.stages": ["x"]})


def test_apply_override_does_not_mutate_its_input() -> None:
    data = {"filter": {"min_words": 3}}
    out = apply_override(data, "filter.min_words=5")
    assert out == {"filter": {"min_words": 5}}
    assert data == {"filter": {"min_words": 3}}


def test_override_without_equals_sign_is_rejected() -> None:
    msg = _error(overrides=["filter.max_caption_wer"])
    assert "filter.max_caption_wer" in msg and "key=value" in msg


def test_override_with_empty_key_is_rejected() -> None:
    assert "empty key" in _error(overrides=["=3"])


def test_unknown_key_names_the_dotted_key_and_suggests_the_close_one() -> None:
    msg = _error(overrides=["filter.max_caption_wr=0.1"])
    assert "filter.max_caption_wr" in msg
    assert "did you mean filter.max_caption_wer" in msg


def test_unknown_section_suggests_the_section() -> None:
    msg = _error(overrides=["filtr.min_words=2"])
    assert "filtr" in msg and "did you mean filter" in msg


def test_unknown_key_in_a_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "cfg.yaml"
    bad.write_text("segment:\n  max_segmnt_s: 10\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(config_file=bad)
    assert "segment.max_segmnt_s" in str(info.value)
    assert "did you mean segment.max_segment_s" in str(info.value)


@pytest.mark.parametrize(("old", "new"), [("projector", "adapter"), ("projector_hidden", "adapter_hidden")])
def test_a_renamed_key_fails_naming_the_old_and_the_new_name(tmp_path: Path, old: str, new: str) -> None:
    value = "linear" if new == "adapter" else 64
    expected = f"train.{old} was renamed train.{new}"
    assert expected in _error(overrides=[f"train.{old}={value}"])  # --set
    user = tmp_path / "cfg.yaml"
    user.write_text(
        f"train:\n  {old}: {value}\nprofiles:\n  p:\n    train: {{{old}: {value}}}\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:  # a config file
        load_config(config_file=user)
    assert expected in str(info.value)
    user.write_text(f"profiles:\n  p:\n    train: {{{old}: {value}}}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:  # a profile
        load_config("p", config_file=user)
    assert expected in str(info.value) and "did you mean" not in str(info.value)
    assert getattr(_load(overrides=[f"train.{new}={value}"]).train, new) == value  # the new name works


def test_setting_a_key_below_a_scalar_is_rejected() -> None:
    msg = _error(overrides=["label.model.size=3"])
    assert "label.model.size" in msg


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("filter.max_caption_wer=abc", "filter.max_caption_wer"),
        ("filter.max_caption_wer=-0.1", "filter.max_caption_wer"),
        ("label.device=tpu", "label.device"),
        ("label.batch_size=0", "label.batch_size"),
        ("shard.validation_fraction=1.0", "shard.validation_fraction"),
        ("segment.max_segment_s=45", "segment.max_segment_s"),
        ("work_dir=' '", "work_dir"),
        ("eval.train_splits=[trian]", "eval.train_splits"),
        ("eval.stages=[x]", "eval.stages"),
    ],
)
def test_bad_value_names_the_key(override: str, key: str) -> None:
    msg = _error(overrides=[override])
    assert f"{key}:" in msg
    assert "unknown key" not in msg
    assert f"--set {key}.0" not in msg  # a list is set whole: --set key=[...]


def test_target_above_max_segment_is_rejected() -> None:
    msg = _error(overrides=["segment.target_segment_s=25"])
    assert "target_segment_s" in msg and "max_segment_s" in msg
    # equal is fine
    cfg = _load(overrides=["segment.target_segment_s=20"])
    assert cfg.segment.target_segment_s == 20.0


def test_ray_address_without_the_ray_runner_is_rejected() -> None:
    msg = _error(overrides=["runner.ray_address=head:6379"])
    assert "runner.ray_address" in msg and "runner.kind=ray" in msg
    cfg = _load(overrides=["runner.kind=ray", "runner.ray_address=head:6379", "runner.label_gpus=0.5"])
    assert (cfg.runner.kind, cfg.runner.ray_address, cfg.runner.label_gpus) == ("ray", "head:6379", 0.5)


def test_label_gpus_follow_the_label_device_and_the_cluster_unless_set() -> None:
    from flows.runners import label_gpus

    def gpus(*overrides: str, cluster: float) -> float:
        return label_gpus(_load(overrides=["runner.kind=ray", *overrides]), cluster)

    assert gpus("label.device=cuda", cluster=8) == 1.0
    assert gpus("label.device=cpu", cluster=8) == 0.0
    assert gpus("label.device=auto", cluster=8) == 1.0 and gpus("label.device=auto", cluster=0) == 0.0
    assert gpus("label.device=cuda", "runner.label_gpus=0.25", cluster=1) == 0.25
    with pytest.raises(RuntimeError, match="runner.label_gpus"):  # would pend forever on a CPU cluster
        gpus("label.device=cuda", cluster=0)


def test_unknown_profile_lists_the_profiles() -> None:
    msg = _error(profile="demoo")
    assert "demoo" in msg and "demo" in msg.replace("demoo", "")
    assert "['demo', 'small']" in msg


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(config_file=tmp_path / "nope.yaml")


def test_config_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "cfg.yaml"
    bad.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(config_file=bad)


def test_section_hash_changes_with_the_section_only() -> None:
    a = _load(profile="demo")
    b = _load(profile="demo", overrides=["filter.min_words=4"])
    assert a.section_hash("segment") == b.section_hash("segment")
    assert a.section_hash("filter") != b.section_hash("filter")


# The settings each cache key leaves out, written out: cache_settings reads them from the fields'
# markers (runtime, for_stages), and these lists pin that a marker added or dropped by mistake changes
# no key.  A new field a key should leave out goes here and on its field.
TRAIN_RUNTIME = {
    "launcher",
    "nproc_per_node",
    "hostfile",
    "node_launcher",
    "master_addr",
    "master_port",
    "num_workers",
    "log_every",
    "val_every",
    "val_max_batches",
    "ckpt_every",
    "timeout_s",
    "cudnn_attention",
    "cache_encoder_outputs",
    "cpu_threads",
}
# stage 1 trains the encoder under Whisper's own decoder (no LLM, adapter or prompt); stage 2 applies
# no LoRA; merge_lora shapes stage 3's exports only
TRAIN_NOT_READ_BY = {
    1: {
        "llm",
        "tokenizer",
        "trust_remote_code",
        "llm_init",
        "adapter",
        "adapter_hidden",
        "downsample_k",
        "activation",
        "adapter_norm",
        "ctc_compress",
        "ctc_weight",
        "ctc_align_steps",
        "ctc_vocab",
        "instruction",
        "lora",
        "skip_stage1",
        "merge_lora",
    },
    2: {"lora", "merge_lora"},
    3: set(),
}
ZIPFORMER_RUNTIME = {
    "enabled",
    "device",
    "log_every",
    "val_every",
    "val_max_batches",
    "ckpt_every",
    "beam",
    "timeout_s",
    "cpu_threads",
}

# the data stages' batching and network knobs (flows.data.ingest_key, tasks.segment.item_key,
# tasks.label.item_key)
DATA_RUNTIME = {
    "ingest": {"items_per_task", "socket_timeout_s"},
    "segment": {"items_per_task"},
    "label": {"items_per_task"},
}


@pytest.mark.parametrize("profile", ["demo", "small", None])
def test_cache_settings_leave_out_exactly_the_runtime_and_unread_settings(profile: str | None) -> None:
    """The cache keys' settings (flows.train.stage_key, tasks.zipformer_train.train_key) are the
    section less the listed keys: the keys of a run stay as they were."""
    cfg = _load(profile=profile)
    for stage in (1, 2, 3):
        settings = cache_settings(cfg.train, stage)
        stages = {"stage1", "stage2", "stage3"}
        assert settings.pop(f"stage{stage}") == getattr(cfg.train, f"stage{stage}").model_dump(mode="json")
        expected = cfg.train.model_dump(
            mode="json", exclude=TRAIN_RUNTIME | TRAIN_NOT_READ_BY[stage] | stages
        )
        assert settings == expected, f"stage {stage}"
    assert cache_settings(cfg.zipformer) == cfg.zipformer.model_dump(mode="json", exclude=ZIPFORMER_RUNTIME)
    assert cache_settings(cfg.train) == cfg.train.model_dump(mode="json", exclude=TRAIN_RUNTIME)
    for section, runtime in DATA_RUNTIME.items():
        got = cache_settings(getattr(cfg, section))
        assert got == getattr(cfg, section).model_dump(mode="json", exclude=runtime), section


def test_small_profile_loads_and_validates() -> None:
    """The small profile (tasks/small_corpus.py) as configured; needs no espeak-ng."""
    cfg = load_config(profile="small", config_file=CONFIG)
    assert cfg.demo is not None and cfg.demo.kind == "small" and cfg.demo.hours >= 1.0
    assert cfg.work_dir == str(REPO / "runs/small") and cfg.sources == [f"{cfg.demo.corpus_dir}/videos"]
    assert (
        cfg.label.model == "bundled:whisper-base"
        and cfg.label.device == "cpu"
        and cfg.label.compute_type == "int8"
    )
    assert (cfg.train.encoder, cfg.train.llm, cfg.train.tokenizer) == (
        "bundled:whisper-base",
        "bundled:smollm2-135m-instruct",
        None,
    )
    assert cfg.train.lora.rank == 16 and "gate_proj" in cfg.train.lora.target_modules
    assert cfg.train.launcher == "torchrun" and cfg.train.deepspeed_config.endswith("zero2_cpu.json")
    tests = dict(spec.split("=", 1) for spec in cfg.eval.test_sets)
    assert tests == {
        "heldout": f"{cfg.demo.corpus_dir}/heldout/manifest.jsonl",
        "zero_shot": f"{cfg.demo.corpus_dir}/zero_shot/manifest.jsonl",
    }
    assert "transformers:bundled:whisper-base" in cfg.eval.baselines and cfg.eval.stages == [1, 3]
    # the demo profile keeps its corpus; keys of the other kind are refused
    demo = load_config(profile="demo", config_file=CONFIG).demo
    assert demo is not None and (demo.kind, demo.corpus_dir, demo.n_items, demo.hours) == (
        "demo",
        str(REPO / "runs/demo/demo-corpus"),
        30,
        None,
    )
    with pytest.raises(ConfigError, match="demo.hours: only for demo.kind=small"):
        load_config(profile="demo", config_file=CONFIG, overrides=["demo.hours=2"])
    assert DemoConfig(kind="small").corpus_dir == "${work_dir}/small-corpus"  # PipelineConfig expands it


@pytest.mark.parametrize(
    "baseline",
    [
        "transformers:bundled:typo",
        "faster-whisper:bundled:typo",
        "transformers:bundled:smollm2-135m-instruct",
    ],
)
def test_an_unknown_bundled_baseline_fails_at_validation_listing_the_names(baseline: str) -> None:
    with pytest.raises(ConfigError, match=r"eval\.baselines.*bundled:whisper-base, bundled:tiny\.en"):
        load_config(config_file=CONFIG, overrides=[f"eval.baselines=[{baseline}]"])
    cfg = load_config(
        config_file=CONFIG,
        overrides=["eval.baselines=[transformers:bundled:tiny.en, faster-whisper:bundled:whisper-base]"],
    )
    assert cfg.eval.baselines == ["transformers:bundled:tiny.en", "faster-whisper:bundled:whisper-base"]
