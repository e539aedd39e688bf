"""`llmasr ablate`: variants of a run trained and evaluated side by side, shared stages trained once.

One real ablation on the demo profile (the session's reference data run, tiny models, 1 CPU
process): `--vary train.stage3.lr=0.01,0.001` trains stages 1 and 2 once and stage 3 twice, writes
comparison.json (metrics and lineage per variant) and report.md, and a rerun trains nothing.  Then
the bad-input errors (before any work, naming the key) and the knobs ablations vary: the linear
adapter, the random LLM, stage 1 skipped, and which stage keys each setting changes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import cli
from conftest import N_ITEMS
from llmasr.config import ConfigError, load_config
from llmasr.layout import WorkLayout
from llmasr.tiny_models import build_demo_models
from tasks import ablate, checkpoints

VARIANTS = ["stage3.lr=0.01", "stage3.lr=0.001"]


@pytest.fixture(scope="module")
def models(session_tmp: Path) -> dict:
    return build_demo_models(session_tmp / "demo-models")


def ablate_argv(work: Path, corpus: Path, models: dict, *extra: str) -> list[str]:
    sets = [
        f"demo.corpus_dir={corpus}",
        f"demo.n_items={N_ITEMS}",
        f"train.encoder={models['whisper']}",
        f"train.llm={models['llm']}",
        f"train.tokenizer={models['tokenizer']}",
        "train.stage1.max_steps=2",
        "train.stage2.max_steps=3",
        "train.stage3.max_steps=3",
        "eval.num_beams=1",
        "eval.stages=[2, 3]",
    ]
    flags = [a for s in sets for a in ("--set", s)]
    return [
        "ablate",
        "--profile",
        "demo",
        "--work-dir",
        str(work),
        "--source",
        str(corpus / "videos"),
        *flags,
        *extra,
    ]


def stage_jsons(work: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in ablate.store_dir(work).glob("*/stage.json")}


@pytest.fixture(scope="module")
def ablation(reference_run, corpus: Path, models: dict, session_tmp: Path):
    """The ablation, run once: (work dir, its output folder, comparison.json, stage.json mtimes)."""
    ref, _ = reference_run
    work = session_tmp / "ablate"
    shutil.copytree(ref, work)
    assert cli.main(ablate_argv(work, corpus, models, "--vary", "train.stage3.lr=0.01,0.001")) == 0
    out = work / "ablations" / "stage3.lr"
    return work, out, json.loads((out / "comparison.json").read_text()), stage_jsons(work)


def test_stage3_lr_trains_stages_1_and_2_once_and_stage_3_per_value(ablation):
    work, out, comparison, _ = ablation
    variants = comparison["variants"]
    assert [v["name"] for v in variants] == VARIANTS
    assert [v["overrides"] for v in variants] == [{"train.stage3.lr": 0.01}, {"train.stage3.lr": 0.001}]
    first, second = (v["lineage"] for v in variants)
    for stage in ("stage1", "stage2"):  # one key, one checkpoint, trained for the first variant
        assert (
            first[stage]["key"] == second[stage]["key"]
            and first[stage]["checkpoint"] == second[stage]["checkpoint"]
        )
        assert (
            first[stage]["trained"]
            and second[stage]["trained"]
            and second[stage]["trained_by"] == VARIANTS[0]
        )
    assert first["stage3"]["key"] != second["stage3"]["key"]
    assert [v["lineage"]["stage3"]["trained_by"] for v in variants] == VARIANTS
    store = ablate.store_dir(work)
    assert sorted(p.name.split("-")[0] for p in store.iterdir()) == ["stage1", "stage2", "stage3", "stage3"]
    # the second variant launched stage 3 only; its stages 1-2 are links to the first's folders, no copies
    folders = [Path(v["folder"]) for v in variants]
    assert sorted(p.name for p in (folders[0] / "logs").glob("stage*.log")) == [
        "stage1.log",
        "stage2.log",
        "stage3.log",
    ]
    assert sorted(p.name for p in (folders[1] / "logs").glob("stage*.log")) == ["stage3.log"]
    for v, folder in zip(variants, folders):
        for stage, info in v["lineage"].items():
            link = folder / "checkpoints" / stage
            assert link.is_symlink() and link.resolve() == Path(info["checkpoint"]).resolve()
            assert checkpoints.read_stage(link)["key"] == info["key"]
    # stage 3's model names the shared stage-1 encoder it was trained on
    model = json.loads((Path(second["stage3"]["checkpoint"]) / "model.json").read_text())
    assert Path(model["encoder"]) == Path(first["stage1"]["checkpoint"]).resolve() / "encoder"


def test_comparison_has_each_variants_metrics_and_the_report(ablation):
    work, out, comparison, _ = ablation
    for v in comparison["variants"]:
        per_system = v["metrics"]["zero_shot"]
        assert {"llmasr-stage2", "llmasr-stage3", "faster-whisper:bundled:tiny.en"} <= set(per_system)
        for m in per_system.values():  # as eval/metrics.json: every rate with its counts
            rates = {"o_wer", "n_wer", "r_wer", "u_wer", "words", "rare_words", "n_errors", "r_errors"}
            assert rates <= set(m)
            assert m["rare_words"] > 0 and m["r_wer"] is not None
        assert (
            json.loads((Path(v["folder"]) / "eval" / "metrics.json").read_text())["results"] == v["metrics"]
        )
    # the second variant decoded neither the shared stage 2 nor the baseline again
    second = comparison["variants"][1]["metrics"]["zero_shot"]
    assert second["llmasr-stage2"]["cached"] and second["faster-whisper:bundled:tiny.en"]["cached"]
    assert not second["llmasr-stage3"]["cached"]
    report = (out / "report.md").read_text()
    assert (
        all(name in report for name in VARIANTS)
        and "R-WER against N-WER" in report
        and "](r_vs_n.png)" in report
    )
    assert (out / "r_vs_n.png").read_bytes()[:4] == b"\x89PNG"


def test_a_rerun_trains_nothing(ablation, corpus: Path, models: dict):
    work, out, comparison, mtimes = ablation
    assert cli.main(ablate_argv(work, corpus, models, "--vary", "train.stage3.lr=0.01,0.001")) == 0
    again = json.loads((out / "comparison.json").read_text())
    for before, after in zip(comparison["variants"], again["variants"]):
        assert {s: i["key"] for s, i in after["lineage"].items()} == {
            s: i["key"] for s, i in before["lineage"].items()
        }
        lineage = after["lineage"]
        assert all(not i["trained"] and i["trained_by"] is None for i in lineage.values()), lineage
    assert stage_jsons(work) == mtimes  # no stage written again
    assert "reused" in (out / "report.md").read_text()


def test_a_stage_the_run_trained_is_adopted_not_retrained(
    ablation, reference_run, corpus, models, session_tmp
):
    """A work dir whose own run trained stage 1 (here: the first ablation's stage 1, placed as
    ``llmasr run`` leaves it): the ablation hard-links it into its store and trains stages 2-3."""
    first_work, _, comparison, _ = ablation
    ref, _ = reference_run
    work = session_tmp / "ablate-adopt"
    shutil.copytree(ref, work)
    trained = Path(comparison["variants"][0]["lineage"]["stage1"]["checkpoint"])
    run_stage1 = checkpoints.stage_dir(work, 1)
    shutil.copytree(trained, run_stage1)
    model = json.loads((run_stage1 / "model.json").read_text())
    model["encoder"] = str(run_stage1.resolve() / "encoder")  # as the run wrote it
    (run_stage1 / "model.json").write_text(json.dumps(model))
    assert cli.main(ablate_argv(work, corpus, models, "--variant", "x:train.stage3.lr=0.01")) == 0
    lineage = json.loads((work / "ablations" / "x" / "comparison.json").read_text())["variants"][0]["lineage"]
    assert not lineage["stage1"]["trained"] and lineage["stage1"]["adopted_from"] == str(run_stage1)
    assert lineage["stage2"]["trained"] and lineage["stage3"]["trained"]
    store1 = Path(lineage["stage1"]["checkpoint"])
    assert store1.parent == ablate.store_dir(work)
    for f in (run_stage1 / "encoder").iterdir():  # hard links: one inode, no bytes copied
        assert (store1 / "encoder" / f.name).stat().st_ino == f.stat().st_ino
    assert json.loads((store1 / "model.json").read_text())["encoder"] == str(store1 / "encoder")
    assert json.loads((run_stage1 / "model.json").read_text()) == model  # the run's left as it was
    stage3 = json.loads((Path(lineage["stage3"]["checkpoint"]) / "model.json").read_text())
    assert Path(stage3["encoder"]) == store1.resolve() / "encoder"
    assert "the run's" in (work / "ablations" / "x" / "report.md").read_text()


def test_adopt_run_stage_only_a_complete_checkpoint_of_the_key(tmp_path: Path):
    root = tmp_path / "w"
    run1, run2 = checkpoints.stage_dir(root, 1), checkpoints.stage_dir(root, 2)
    (run2 / "adapter").mkdir(parents=True)
    (run2 / "adapter" / "w.bin").write_bytes(b"x")
    (run2 / "model.json").write_text(
        json.dumps({"encoder": str(run1 / "encoder"), "adapter_path": str(run2 / "adapter"), "lr": 1})
    )
    checkpoints.write_stage(run1, stage=1, key="k1")
    target = ablate.stage_folder(root, 2, "k2")
    target.mkdir(parents=True)
    assert not ablate.adopt_run_stage(root, 2, "k2", target)  # the run's stage 2 is not complete
    checkpoints.write_stage(run2, stage=2, key="k2")
    assert not ablate.adopt_run_stage(root, 2, "other", target)  # another key
    (target / "half-written").write_text("")  # an interrupted training's leftovers
    assert ablate.adopt_run_stage(root, 2, "k2", target)
    assert sorted(p.name for p in target.iterdir()) == ["adapter", "model.json", "stage.json"]
    assert json.loads((target / "model.json").read_text()) == {
        "encoder": str(ablate.stage_folder(root, 1, "k1") / "encoder"),
        "adapter_path": str(target / "adapter"),
        "lr": 1,
    }
    assert json.loads((run2 / "model.json").read_text())["adapter_path"] == str(run2 / "adapter")
    assert not ablate.adopt_run_stage(root, 2, "k2", target)  # the store has it now
    assert not list(target.parent.glob(".tmp-*"))


# ---------------------------------------------------------------------- bad input, before any work


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--vary", "train.adaptr=linear,mlp"],
            "train.adaptr: unknown key; did you mean train.adapter?",
        ),
        (  # the knob's former name: fails naming the new one
            ["--vary", "train.projector=linear,mlp"],
            "train.projector was renamed train.adapter",
        ),
        (
            ["--variant", "wide:train.projector_hidden=64"],
            "variant wide (train.projector_hidden=64): "
            "train.projector_hidden was renamed train.adapter_hidden",
        ),
        (["--vary", "train.stage3.lr=-1,0.1"], "train.stage3.lr"),
        (["--vary", "train.stage3.lr="], "--vary train.stage3.lr: no values"),
        (["--vary", "train.lora.rank"], "--vary train.lora.rank: no values"),
        (
            ["--vary", f"train.seed={','.join(map(str, range(17)))}"],
            "--vary train.seed (17 values): 17 variants, over 16",
        ),
        (
            ["--vary", "filter.max_caption_wer=0.1,0.2"],
            "--vary filter.max_caption_wer: only train.* and eval.* keys",
        ),
        (["--variant", "lin:train.adapter=conv"], "variant lin (train.adapter=conv): train.adapter"),
        (
            ["--variant", "a:train.seed=1", "--variant", "a:train.seed=2"],
            "two variants would share the name a",
        ),
        ([], "nothing to compare"),
    ],
)
def test_bad_input_fails_before_any_work_naming_the_key(flags, expected, tmp_path: Path, capsys):
    work = tmp_path / "w"
    assert cli.main(["ablate", "--profile", "demo", "--work-dir", str(work), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
    assert not work.exists()


def test_plans_grid_and_picked_variants():
    plan = ablate.make_plan(
        load_config("demo", work_dir="/tmp/w"),
        vary=["train.adapter=mlp,linear", "train.seed=0,1"],
        variants=["base:", "lora4:train.lora.rank=4,train.lora.target_modules=[q_proj, v_proj]"],
    )
    assert plan.name == "adapter+seed"
    assert [v.name for v in plan.variants] == [
        "adapter=mlp,seed=0", "adapter=mlp,seed=1", "adapter=linear,seed=0", "adapter=linear,seed=1",
        "base", "lora4",
    ]  # fmt: skip
    lora4 = plan.configs["lora4"]
    assert lora4.train.lora.target_modules == ["q_proj", "v_proj"] and lora4.train.lora.rank == 4
    assert Path(lora4.work_dir) == Path("/tmp/w/ablations/adapter+seed/variants/lora4")
    # the work dir's paths, not the variant folder's
    assert lora4.train.encoder == "/tmp/w/demo-models/whisper"
    assert ablate.override_values(lora4, plan.variants[-1]) == {
        "train.lora.rank": 4,
        "train.lora.target_modules": ["q_proj", "v_proj"],
    }
    seeds = f"train.seed={','.join(map(str, range(17)))}"
    base = load_config("demo", work_dir="/tmp/w")
    assert len(ablate.make_plan(base, vary=[seeds], yes=True).variants) == 17
    with pytest.raises(ConfigError, match="--vary train.seed: given twice"):
        ablate.make_plan(base, vary=["train.seed=0,1", "train.seed=2"])


# --------------------------------------------------------------------------- the knobs ablations vary


def test_linear_adapter_is_one_linear_and_round_trips(tmp_path: Path):
    from llmasr.model import Adapter, load_adapter, save_adapter

    proj = Adapter(8, 16, hidden=32, k=2, kind="linear")
    linears = [(m.in_features, m.out_features) for m in proj.modules() if isinstance(m, torch.nn.Linear)]
    assert linears == [(16, 16)]
    y, lens = proj(torch.randn(3, 7, 8), torch.tensor([7, 4, 2]))  # (B, T, D_enc): odd tail dropped
    assert y.shape == (3, 3, 16) and lens.tolist() == [3, 2, 1]
    loaded = load_adapter(save_adapter(proj, tmp_path / "p"))
    assert loaded.kind == "linear" and torch.equal(loaded.linear1.weight, proj.linear1.weight)
    with pytest.raises(ValueError, match="kind"):
        Adapter(8, 16, kind="conv")


def test_random_llm_is_the_same_every_build_and_not_the_checkpoint(models: dict):
    from llmasr.model import build_llm

    state = torch.random.get_rng_state()
    a = build_llm(models["llm"], init="random", seed=0)
    b = build_llm(models["llm"], init="random", seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    pretrained = build_llm(models["llm"])
    other = build_llm(models["llm"], init="random", seed=1)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.get_input_embeddings().weight, pretrained.get_input_embeddings().weight)
    assert not torch.equal(a.get_input_embeddings().weight, other.get_input_embeddings().weight)


def test_model_config_of_the_knobs(tmp_path: Path):
    cfg = load_config(
        "demo",
        ["train.adapter=linear", "train.llm_init=random", "train.seed=3", "train.skip_stage1=true"],
        work_dir=str(tmp_path),
    )
    # a stage 1 of an earlier run
    checkpoints.write_stage(checkpoints.stage_dir(tmp_path, 1), stage=1, key="k1")
    model = checkpoints.model_config(cfg.train, tmp_path, 2)
    assert (model.adapter, model.llm_init, model.llm_seed) == ("linear", "random", 3)
    assert model.encoder == cfg.train.encoder  # skip_stage1: the stock encoder, not checkpoints/stage1
    cfg_on = load_config("demo", work_dir=str(tmp_path))
    assert checkpoints.model_config(cfg_on.train, tmp_path, 2).encoder == str(
        checkpoints.stage_dir(tmp_path, 1) / "encoder"
    )


def test_stage_keys_change_only_where_a_setting_is_read(tmp_path: Path):
    from flows.train import stage_key

    layout = WorkLayout(tmp_path)
    layout.shards.mkdir(parents=True)
    layout.shard_index.write_text('{"shards": []}')

    def keys(*overrides: str) -> list[str]:
        cfg = load_config("demo", list(overrides), work_dir=str(tmp_path))
        out = []
        for stage in (1, 2, 3):  # each stage's key as the flow computes it, after the stage before
            key = stage_key(cfg, layout, stage)
            checkpoints.write_stage(checkpoints.stage_dir(tmp_path, stage), stage=stage, key=key)
            out.append(key)
        return out

    base = keys()
    lr3, adapter, lora, seed, skip = (
        keys(o)
        for o in (
            "train.stage3.lr=0.5",
            "train.adapter=linear",
            "train.lora.rank=2",
            "train.seed=1",
            "train.skip_stage1=true",
        )
    )
    assert lr3[:2] == base[:2] and lr3[2] != base[2]  # stage 3 only
    assert adapter[0] == base[0] and adapter[1] != base[1] and adapter[2] != base[2]  # stages 2 and 3
    assert lora[:2] == base[:2] and lora[2] != base[2]
    assert all(s != b for s, b in zip(seed, base))
    assert skip[1] != base[1]  # stage 2 on the stock encoder
    assert keys("train.llm_init=random")[0] == base[0]


def test_the_knobs_train_and_decode_for_real(reference_run, corpus: Path, models: dict, session_tmp: Path):
    """Stage 1 skipped, a linear adapter and a random LLM through the train flow: stages 2-3 only,
    and the stage-3 model loads back with the stock encoder, that adapter and the same random LLM."""
    from flows.train import train_flow
    from llmasr.model import build_llm

    ref, _ = reference_run
    work = session_tmp / "knobs"
    shutil.copytree(ref, work)
    overrides = [
        f"demo.corpus_dir={corpus}", f"demo.n_items={N_ITEMS}", f"train.encoder={models['whisper']}",
        f"train.llm={models['llm']}", f"train.tokenizer={models['tokenizer']}",
        "train.stage2.max_steps=2", "train.stage3.max_steps=1",
        "train.skip_stage1=true", "train.adapter=linear", "train.llm_init=random",
    ]  # fmt: skip
    state = train_flow(profile="demo", work_dir=str(work), overrides=overrides, return_state=True)
    assert state.is_completed(), state.message
    assert sorted(state.result()) == ["stage2", "stage3"] and not checkpoints.stage_dir(work, 1).exists()
    model = checkpoints.load_llmasr(checkpoints.stage_dir(work, 3))
    assert json.loads((checkpoints.stage_dir(work, 3) / "model.json").read_text())["encoder"] == str(
        Path(models["whisper"]).resolve()
    )
    assert model.adapter.kind == "linear" and not hasattr(model.adapter, "linear2")
    drawn = build_llm(models["llm"], init="random", seed=0)
    assert torch.equal(model.llm.get_input_embeddings().weight, drawn.get_input_embeddings().weight)


def test_skip_stage1_trains_stages_2_and_3(tmp_path: Path):
    from flows.train import check_stages, stages_to_train

    cfg = load_config("demo", ["train.skip_stage1=true"], work_dir=str(tmp_path))
    assert stages_to_train(cfg, [1, 2, 3]) == [2, 3]
    with pytest.raises(ConfigError, match="train.skip_stage1"):
        stages_to_train(cfg, [1])
    layout = WorkLayout(tmp_path)
    layout.shards.mkdir(parents=True)
    layout.shard_index.write_text('{"shards": []}')
    check_stages(cfg, layout, [2, 3])  # no stage-1 checkpoint needed
    with pytest.raises(ConfigError, match="stage 2 needs the checkpoint of stage 1"):
        check_stages(load_config("demo", work_dir=str(tmp_path)), layout, [2, 3])
