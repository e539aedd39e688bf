"""One rule for relative paths (llmasr/config/paths.py ``PATH_KEYS``): a config file's are relative to its
folder, the command line's to the current folder; both are made absolute at load time, so the flow,
the trainer subprocess (started in the repository) and the exports they write name the same files.
The demo profile writes nothing outside its work dir.  The flow tests run from folders other than
the repository and check that what the run records is absolute and exists, and that the stage-3
LoRA export loads with peft's ``AutoPeftModelForCausalLM`` from yet another folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import N_ITEMS
from llmasr.config import ConfigError, PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[1]


def test_command_line_paths_are_relative_to_the_current_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        "demo",
        [
            "eval.word_list=words.txt",
            "train.hostfile=hosts",
            "eval.hyps=[zf=hyps/zf.tsv]",
            "eval.baselines=[faster-whisper:large-v2, transformers:ckpt/stage1/whisper]",
        ],
        work_dir="w",
        sources=["clips", "https://www.youtube.com/@SomeChannel"],
    )
    assert cfg.work_dir == str(tmp_path / "w")
    # a URL is not a path
    assert cfg.sources == [str(tmp_path / "clips"), "https://www.youtube.com/@SomeChannel"]
    assert (cfg.eval.word_list, cfg.train.hostfile) == (str(tmp_path / "words.txt"), str(tmp_path / "hosts"))
    assert cfg.eval.hyps == [f"zf={tmp_path / 'hyps/zf.tsv'}"]
    # a size name is not a path
    assert cfg.eval.baselines == [
        "faster-whisper:large-v2",
        f"transformers:{tmp_path / 'ckpt/stage1/whisper'}",
    ]
    # the shipped file's own paths: relative to its folder (the repository), wherever we are
    assert (
        cfg.train.deepspeed_config == str(REPO / "infra/deepspeed/zero2_cpu.json")
        and Path(cfg.train.deepspeed_config).is_file()
    )
    # the demo profile's corpus and tiny models follow the work dir; its test set and source follow the corpus
    assert cfg.demo is not None and cfg.demo.corpus_dir == str(tmp_path / "w" / "demo-corpus")
    assert (cfg.train.encoder, cfg.train.llm, cfg.train.tokenizer) == tuple(
        str(tmp_path / "w" / "demo-models" / p) for p in ("whisper", "llm", "tokenizer")
    )
    assert cfg.eval.test_sets == [
        f"zero_shot={tmp_path / 'w' / 'demo-corpus' / 'zero_shot' / 'manifest.jsonl'}"
    ]
    moved = load_config("demo", ["demo.corpus_dir=shared/corpus"], work_dir="w")
    assert moved.sources == [str(tmp_path / "shared/corpus/videos")] and moved.eval.test_sets[0].endswith(
        "=" + str(tmp_path / "shared/corpus/zero_shot/manifest.jsonl")
    )
    # absolute already: loading the dumped config again from another folder changes nothing
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert PipelineConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def test_a_config_files_paths_are_relative_to_its_folder(tmp_path: Path, monkeypatch) -> None:
    conf = tmp_path / "project"
    (conf / "encoder-ckpt").mkdir(parents=True)  # exists beside the file: a path, though it has no '/'
    (conf / "ds.json").write_text("{}")
    (conf / "my.yaml").write_text(
        yaml.safe_dump(
            {
                "work_dir": "out",
                "sources": ["clips/a.wav", "~/b.wav"],
                "label": {"model": "large-v3"},
                "train": {
                    "encoder": "encoder-ckpt",
                    "llm": "Qwen/Qwen2-0.5B",
                    "tokenizer": "./tok",
                    "deepspeed_config": "ds.json",
                },
                "eval": {
                    "test_sets": ["mine=sets/mine.jsonl"],
                    "baselines": ["faster-whisper:bundled:tiny.en", "faster-whisper:models/ct2/base"],
                },
            }
        )
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config(config_file="project/my.yaml", overrides=["train.tokenizer=tok2/x/y"])
    assert cfg.work_dir == str(conf / "out") and cfg.sources == [
        str(conf / "clips/a.wav"),
        str(Path("~/b.wav").expanduser()),
    ]
    # size and hub names stay names
    assert cfg.label.model == "large-v3" and cfg.train.llm == "Qwen/Qwen2-0.5B"
    assert (cfg.train.encoder, cfg.train.deepspeed_config) == (
        str(conf / "encoder-ckpt"),
        str(conf / "ds.json"),
    )
    assert cfg.train.tokenizer == str(tmp_path / "tok2/x/y")  # --set: the current folder
    assert cfg.eval.test_sets == [f"mine={conf / 'sets/mine.jsonl'}"]
    assert cfg.eval.baselines == [
        "faster-whisper:bundled:tiny.en",
        f"faster-whisper:{conf / 'models/ct2/base'}",
    ]
    # --work-dir
    assert load_config(config_file="project/my.yaml", work_dir="here").work_dir == str(tmp_path / "here")
    # a config built in code: relative paths are the current folder's
    assert PipelineConfig(work_dir="w", train={"encoder": "./enc"}).train.encoder == str(tmp_path / "enc")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "train.llm=${workdir}/llm",
            "train.llm: '${workdir}/llm': a path may only start with ${work_dir} or ${demo.corpus_dir}",
        ),
        ("work_dir=${work_dir}/x", "work_dir: '${work_dir}/x': the work dir cannot start with"),
        ("demo.corpus_dir=${demo.corpus_dir}/x", "demo.corpus_dir: '${demo.corpus_dir}/x' refers to itself"),
    ],
)
def test_bad_path_references_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("demo", [override])
    assert str(info.value).startswith(message)
    with pytest.raises(
        ConfigError,
        match=r"^train.llm: '\$\{demo.corpus_dir\}/x' needs demo.corpus_dir, which is not set here",
    ):
        load_config(overrides=["train.llm=${demo.corpus_dir}/x"])  # no demo: section at the top level


def _paths_in(record: dict, keys: tuple[str, ...]) -> list[Path]:
    out = [Path(record[k]) for k in keys if record.get(k)]
    assert all(p.is_absolute() and p.exists() for p in out), {k: record.get(k) for k in keys}
    return out


def test_demo_training_from_another_folder_records_absolute_paths(
    prefect_harness, reference_run, corpus: Path, tmp_path: Path, monkeypatch
) -> None:
    """`llmasr train --profile demo --work-dir work` run from a folder that is not the repository:
    the tiny models are built under the work dir, the trainer (started in the repository) trains the
    same work dir, and every record names absolute paths that exist; the LoRA export then loads from
    a third folder."""
    import cli
    from tasks import checkpoints

    ref, _ = reference_run
    shutil.copytree(
        ref,
        tmp_path / "work",
        ignore=shutil.ignore_patterns("checkpoints", "logs", "eval", ".prefect-results"),
    )
    monkeypatch.chdir(tmp_path)
    sets = [
        f"demo.corpus_dir={corpus}",
        f"demo.n_items={N_ITEMS}",
        "train.stage1.max_steps=2",
        "train.stage2.max_steps=2",
        "train.stage3.max_steps=2",
    ]
    assert (
        cli.main(
            ["train", "--profile", "demo", "--work-dir", "work", *[a for s in sets for a in ("--set", s)]]
        )
        == 0
    )
    work = tmp_path / "work"
    models = work / "demo-models"
    assert sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) == [
        "llm",
        "tokenizer",
        "whisper",
    ]
    # nothing beside the work dir, nothing in the repository
    assert not (tmp_path / "runs").exists() and not (REPO / "work").exists()

    for stage in (1, 2, 3):
        run = json.loads((work / "logs" / f"stage{stage}.run.json").read_text())
        _paths_in(run, ("work_dir", "shard_index", "out_dir", "deepspeed_config"))
        assert Path(run["work_dir"]) == work
        model = json.loads((checkpoints.stage_dir(work, stage) / "model.json").read_text())
        _paths_in(model, ("encoder", "llm", "tokenizer", "adapter_path"))
    model3 = json.loads((checkpoints.stage_dir(work, 3) / "model.json").read_text())
    assert (model3["llm"], model3["tokenizer"]) == (str(models / "llm"), str(models / "tokenizer"))
    assert model3["encoder"] == str(checkpoints.stage_dir(work, 1) / "encoder")
    lora = checkpoints.stage_dir(work, 3) / "lora"
    base = json.loads((lora / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(models / "llm")

    other = tmp_path / "another-folder"
    other.mkdir()
    monkeypatch.chdir(other)
    from peft import AutoPeftModelForCausalLM

    llm = AutoPeftModelForCausalLM.from_pretrained(str(lora))
    assert (
        type(llm).__name__ == "PeftModelForCausalLM"
        and llm.peft_config["default"].base_model_name_or_path == base
    )
    # model.json rebuilds the whole model here too
    assert checkpoints.load_llmasr(checkpoints.stage_dir(work, 3)) is not None


def test_the_demo_profile_with_ones_own_source_writes_only_under_the_work_dir(
    prefect_harness, corpus: Path, tmp_path: Path, monkeypatch
) -> None:
    """`llmasr data --profile demo --source clips --work-dir w`, run from another folder: the demo
    corpus (its zero-shot set is the profile's test set) is generated under w, and only the user's
    clip is ingested; nothing is written beside w."""
    import cli
    from llmasr.layout import WorkLayout
    from llmasr.records import Item, read_records

    (tmp_path / "clips").mkdir()
    clip = next(p for p in sorted((corpus / "videos").glob("*.wav")) if p.stat().st_size > 0)
    shutil.copy(clip, tmp_path / "clips" / "mine.wav")
    monkeypatch.chdir(tmp_path)
    assert (
        cli.main(
            ["data", "--profile", "demo", "--source", "clips", "--work-dir", "w", "--set", "demo.n_items=4"]
        )
        == 0
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips", "w"]
    assert (tmp_path / "w" / "demo-corpus" / "zero_shot" / "manifest.jsonl").is_file()
    items = read_records(WorkLayout(tmp_path / "w").items, Item)
    # paths in manifests: relative to the work dir
    assert [Path(i.source) for i in items] == [tmp_path / "clips"] and (
        tmp_path / "w" / items[0].path
    ).is_file()
