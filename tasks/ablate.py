"""Ablations: variants of one run, each trained and evaluated, sharing every stage they can.

Plain functions over paths and records; flows/ablate.py strings them together.

    plan = make_plan(load_config("demo", work_dir="runs/demo"), vary=["train.stage3.lr=0.01,0.001"])
    folder = link_stage(variant_dir, 3, key, store_dir(plan.root))    # before the stage's task runs
    comparison = build_comparison(plan, lineages, metrics)
    write_outputs(plan.out_dir, comparison)                           # comparison.json, report.md, r_vs_n.png

A plan is a grid over ``--vary KEY=V1,V2`` keys (every combination), hand-picked
``--variant NAME:KEY=V,KEY=V`` variants, or both.  Only ``train.*`` and ``eval.*`` keys vary: the
data stage runs once, and every variant trains on the work dir's shards.  Every variant's config is
validated before any work, so an unknown key, a value the config rejects, an empty value list or an
unconfirmed large grid fails first, naming the key.

Files under ``<work_dir>/ablations/``:

    checkpoints/stage<N>-<key16>/   a stage trained by an ablation of this work dir, one folder per
                                    cache key (flows/train.py ``stage_key``: shards, the stage before,
                                    the settings the stage reads, the code): every variant and every
                                    later ablation whose stage has that key uses it
    <name>/comparison.json          {"variants": [{name, overrides, metrics, lineage, folder}], ...}
    <name>/report.md, r_vs_n.png    the table, the lineage, R-WER against N-WER per variant
    <name>/variants/<variant>/      the variant's work dir: shards/ and manifests/ link to the work
                                    dir's, checkpoints/stage<N> links to the store folder of its key;
                                    logs/ and eval/ (its evaluation, as ``llmasr evaluate`` writes it)

A stage's folder is the link's target, never a copy: the trainer writes through the link, and
model.json records the resolved folders, so a stage 3 names the stage-2 adapter it started from.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmasr.atomic import TMP_PREFIX, atomic_path, write_json, write_text
from llmasr.config import STAGES, ConfigError, PipelineConfig, with_overrides
from llmasr.report import figure_png, inline_image, markdown_table, pyplot

ABLATIONS = "ablations"
STORE = "checkpoints"  # <work_dir>/ablations/checkpoints: the stage folders, by key
VARIANTS = "variants"
MAX_VARIANTS = 16  # more need --yes: each variant trains at least one stage
VARIABLE = ("train.", "eval.")  # what may vary: the data stage runs once
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=,+-]*$")
_FOLDER_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


@dataclass(frozen=True)
class Variant:
    """One variant: its name and its overrides, ``key=value`` as given (parsed as --set parses them)."""

    name: str
    overrides: tuple[str, ...]

    @property
    def folder(self) -> str:
        return _FOLDER_UNSAFE.sub("_", self.name)

    def keys(self) -> list[str]:
        return [o.split("=", 1)[0] for o in self.overrides]


@dataclass
class Plan:
    """A validated ablation: its variants, each variant's config (work_dir: the variant's folder;
    every path resolved against the real work dir), the base config (no variant's overrides)."""

    name: str
    root: Path  # the work dir
    base: PipelineConfig
    variants: list[Variant]
    configs: dict[str, PipelineConfig]
    vary: list[str] = field(default_factory=list)

    @property
    def out_dir(self) -> Path:
        return self.root / ABLATIONS / self.name

    def variant_dir(self, variant: Variant) -> Path:
        return self.out_dir / VARIANTS / variant.folder


def store_dir(root: Path | str) -> Path:
    return Path(root) / ABLATIONS / STORE


# ------------------------------------------------------------------------------ the plan


def split_values(text: str) -> list[str]:
    """``text`` split at its commas outside brackets and quotes: ``0.1,[a,b],"x,y"`` -> 3 values."""
    out, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return [v.strip() for v in out]


def _check_key(key: str, flag: str) -> None:
    if not key:
        raise ConfigError(f"{flag}: empty key; write e.g. --vary train.stage3.lr=1e-4,1e-5")
    if not key.startswith(VARIABLE):
        raise ConfigError(
            f"{flag} {key}: only train.* and eval.* keys vary in an ablation: "
            "the data stage runs once, on the work dir's shards "
            f"(for another {key.split('.')[0]} setting run `llmasr data` into another work dir)"
        )


def parse_vary(spec: str) -> tuple[str, list[str]]:
    """``KEY=V1,V2`` -> (key, values); every value non-empty, none twice."""
    key, sep, raw = spec.partition("=")
    key = key.strip()
    _check_key(key, "--vary")
    values = split_values(raw) if sep and raw.strip() else []
    if not values:
        raise ConfigError(f"--vary {key}: no values; write --vary {key}=V1,V2 (values separated by commas)")
    if any(not v for v in values):
        raise ConfigError(
            f"--vary {key}={raw}: an empty value; write values separated by single commas, "
            f"e.g. --vary {key}=V1,V2"
        )
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise ConfigError(f"--vary {key}: value {twice[0]} given twice")
    return key, values


def parse_variant(spec: str) -> Variant:
    """``NAME:KEY=V,KEY=V`` -> Variant (``NAME:`` alone: the config as it is)."""
    name, sep, rest = spec.partition(":")
    name = name.strip()
    if not sep or not name:
        raise ConfigError(
            f"--variant {spec!r}: write NAME:KEY=VALUE[,KEY=VALUE...], "
            "e.g. --variant linear:train.adapter=linear (NAME: alone is the config as it is)"
        )
    if not _NAME.match(name):
        raise ConfigError(
            f"--variant {name!r}: "
            "a variant name is letters, digits and _ . = , + - (not starting with . or -)"
        )
    overrides = []
    for item in split_values(rest) if rest.strip() else []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise ConfigError(
                f"--variant {name}: {item!r} is not KEY=VALUE; write e.g. --variant {name}:train.seed=1"
            )
        _check_key(key, f"--variant {name}:")
        if not value.strip():
            raise ConfigError(f"--variant {name}: {key} has no value; write {key}=VALUE")
        if key in (o.split("=", 1)[0] for o in overrides):
            raise ConfigError(f"--variant {name}: {key} given twice")
        overrides.append(f"{key}={value.strip()}")
    return Variant(name, tuple(overrides))


def _short(key: str) -> str:
    return key.removeprefix("train.")


def grid(vary: Sequence[str]) -> list[Variant]:
    """Every combination of the ``--vary`` values, in the order given; named ``stage3.lr=0.01,seed=1``."""
    parsed = [parse_vary(spec) for spec in vary]
    keys = [k for k, _ in parsed]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(
            f"--vary {twice[0]}: given twice; list every value in one --vary {twice[0]}=V1,V2,..."
        )
    if not parsed:
        return []
    return [
        Variant(
            ",".join(f"{_short(k)}={v}" for k, v in zip(keys, combo)),
            tuple(f"{k}={v}" for k, v in zip(keys, combo)),
        )
        for combo in itertools.product(*(values for _, values in parsed))
    ]


def default_name(vary: Sequence[str], variants: Sequence[Variant]) -> str:
    """The vary keys (``stage3.lr+seed``), else the hand-picked variants' names."""
    parts = [_short(spec.partition("=")[0].strip()) for spec in vary] or [v.name for v in variants]
    return _FOLDER_UNSAFE.sub("_", "+".join(parts))[:80].strip("._") or "ablation"


def check_name(name: str) -> str:
    if not name or not _NAME.match(name) or "=" in name or "," in name:
        raise ConfigError(
            f"--name {name!r}: "
            f"an ablation name is letters, digits and _ . + - (a folder under <work_dir>/{ABLATIONS}/)"
        )
    if name == STORE:
        raise ConfigError(
            f"--name {name}: taken by the checkpoint store <work_dir>/{ABLATIONS}/{STORE}; "
            "choose another name"
        )
    return name


def _one_line(exc: ConfigError) -> str:
    return re.sub(r"\s*\n\s*", "; ", str(exc)).removeprefix("invalid configuration:; ")


def make_plan(
    base: PipelineConfig,
    vary: Sequence[str] | None = None,
    variants: Sequence[str] | None = None,
    name: str | None = None,
    yes: bool = False,
) -> Plan:
    """Parse and validate an ablation of the run ``base`` configures before any work (each variant:
    ``base`` with its overrides); raises ConfigError naming the key at fault."""
    vary, variants = list(vary or []), list(variants or [])
    picked = [parse_variant(spec) for spec in variants]
    planned = grid(vary) + picked
    if not planned:
        raise ConfigError(
            "nothing to compare: give --vary KEY=V1,V2 (a grid) "
            "and/or --variant NAME:KEY=VALUE,... (at least one)"
        )
    names = [v.name for v in planned]
    folders = [v.folder for v in planned]
    twice = sorted({n for n in names if names.count(n) > 1}) or sorted(
        {f for f in folders if folders.count(f) > 1}
    )
    if twice:
        raise ConfigError(
            f"--variant {twice[0]}: two variants would share the name {twice[0]}; "
            "rename one (--variant NAME:...)"
        )
    if len(planned) > MAX_VARIANTS and not yes:
        counts = (
            " x ".join(f"{parse_vary(s)[0]} ({len(parse_vary(s)[1])} values)" for s in vary) or "--variant"
        )
        raise ConfigError(
            f"--vary {counts}: {len(planned)} variants, over {MAX_VARIANTS}; each trains at least one stage: "
            "pass --yes to run them all, or vary fewer values"
        )
    name = check_name(name or default_name(vary, picked))
    root = Path(base.work_dir)
    plan = Plan(name, root, base, planned, {}, vary)
    for v in planned:
        try:
            cfg = with_overrides(base, v.overrides)
        except ConfigError as exc:
            raise ConfigError(
                f"variant {v.name} ({', '.join(v.overrides) or 'no overrides'}): {_one_line(exc)}"
            ) from None
        plan.configs[v.name] = variant_config(cfg, plan.variant_dir(v))
    return plan


def variant_config(cfg: PipelineConfig, folder: Path) -> PipelineConfig:
    """``cfg`` (paths resolved against the real work dir) with the variant's folder as work dir; a
    variant that skips stage 1 evaluates no stage-1 system."""
    data = cfg.model_dump(mode="json")
    data["work_dir"] = str(folder)
    if cfg.train.skip_stage1:
        data["eval"]["stages"] = [s for s in cfg.eval.stages if s != 1]
    return PipelineConfig.model_validate(data)


def override_values(cfg: PipelineConfig, variant: Variant) -> dict[str, Any]:
    """{key: the value the config validated} of the variant's overrides (``1e-3`` -> 0.001)."""
    out = {}
    dumped = cfg.model_dump(mode="json")
    for key in variant.keys():
        node: Any = dumped
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


# ------------------------------------------------------------------------ variant folders


def _link(link: Path, target: Path) -> None:
    """``link`` -> ``target`` as a relative symlink, replacing a link that points elsewhere."""
    rel = os.path.relpath(target, link.parent)
    if link.is_symlink():
        if os.readlink(link) == rel:
            return
        link.unlink()
    elif link.exists():
        raise ConfigError(
            f"{link} exists and is not a link: remove it (an ablation's variant folder holds only links, "
            "logs/ and eval/)"
        )
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(rel, target_is_directory=True)


def prepare_variant_dir(root: Path, folder: Path) -> Path:
    """The variant's work dir: shards/ and manifests/ (the training transcripts the rare-word set
    counts) link to the work dir's."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("shards", "manifests"):
        if (root / name).is_dir():
            _link(folder / name, root / name)
    return folder


def stage_folder(root: Path, stage: int, key: str) -> Path:
    return store_dir(root) / f"stage{stage}-{key[:16]}"


def link_stage(folder: Path, root: Path, stage: int, key: str) -> Path:
    """Point the variant's checkpoints/stage<N> at the store folder of ``key`` (made if new);
    returns that folder."""
    target = stage_folder(root, stage, key)
    target.mkdir(parents=True, exist_ok=True)
    _link(folder / "checkpoints" / f"stage{stage}", target)
    return target


def adopt_run_stage(root: Path, stage: int, key: str, target: Path) -> bool:
    """Fill store folder ``target`` with the work dir's own ``checkpoints/stage<N>`` when that is a
    complete checkpoint of ``key`` (the stage ``llmasr run`` trained with the same inputs and
    settings) and ``target`` holds none: a variant equal to the run up to this stage trains nothing.

    Files are hard links (no bytes copied; a copy where the file system refuses), so a later
    ``llmasr run`` that retrains the work dir's stage, which writes new files, leaves the store's
    alone.  model.json's paths into the work dir's stage folders are rewritten to their store
    folders (each stage adopted in order, so stage 3 names the store's stage-1 encoder, not the
    run's).  Returns whether it adopted."""
    from tasks.checkpoints import read_stage, stage_dir

    source = stage_dir(root, stage)
    done = read_stage(source)
    have = read_stage(target)
    if done is None or done.get("key") != key or (have is not None and have.get("key") == key):
        return False
    tmp = target.with_name(f"{TMP_PREFIX}{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)  # a killed adoption's
    shutil.copytree(source, tmp, copy_function=_hard_link_or_copy)
    model_json = tmp / "model.json"
    if model_json.is_file():
        moved = {}
        for s in STAGES:
            run_key = _stage_key(root, s)
            if run_key is not None:
                folder = str(stage_folder(root, s, run_key))
                moved[str(stage_dir(root, s))] = folder
                moved[str(stage_dir(root, s).resolve())] = folder
        data = json.loads(model_json.read_text(encoding="utf-8"))
        model_json.unlink()  # a hard link into the run's folder: write a new file, not through it
        write_json(model_json, _repoint(data, moved))
    shutil.rmtree(target, ignore_errors=True)  # empty, or an interrupted or other-key run's leftovers
    os.rename(tmp, target)  # the store folder appears whole or not at all
    return True


def _stage_key(root: Path, stage: int) -> str | None:
    from tasks.checkpoints import read_stage, stage_dir

    done = read_stage(stage_dir(root, stage))
    return done.get("key") if done else None


def _repoint(data: Any, moved: dict[str, str]) -> Any:
    """``data`` with every string that is a path under a key of ``moved`` under its value instead."""
    if isinstance(data, dict):
        return {k: _repoint(v, moved) for k, v in data.items()}
    if isinstance(data, list):
        return [_repoint(v, moved) for v in data]
    if isinstance(data, str):
        for old, new in moved.items():
            if data == old or data.startswith(old + os.sep):
                return new + data[len(old) :]
    return data


def _hard_link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def unlink_stage(folder: Path, stage: int) -> None:
    """No checkpoints/stage<N> in the variant (a variant that skips stage 1)."""
    link = folder / "checkpoints" / f"stage{stage}"
    if link.is_symlink():
        link.unlink()


def seed_decode_caches(sources: Sequence[Path], dest: Path) -> int:
    """Copy into eval folder ``dest`` the decode caches (``<set>/<system>.decode.json``) of earlier
    variants' eval folders that it lacks.  A cache is used only where its key matches the system,
    checkpoint and settings decoding now (tasks/evaluate.py ``decode_cached``), so a baseline or a
    shared stage is decoded once per ablation; any other is decoded again.  Returns how many."""
    copied = 0
    for src in sources:
        for cache in sorted(src.glob("*/*.decode.json")):
            target = dest / cache.relative_to(src)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(target) as tmp:
                    shutil.copyfile(cache, tmp)
                copied += 1
    return copied


# ---------------------------------------------------------------------------- comparison


def finish_lineage(
    variants: Sequence[Variant], lineages: dict[str, dict[str, dict[str, Any]]]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per variant and stage: {checkpoint, key, trained, trained_by[, adopted_from]}.
    ``lineages[variant][stageN]`` says whether that variant's run of the stage trained it; a stage
    trained once for several variants is ``trained`` (by this ablation) in all of them,
    ``trained_by`` the first."""
    by_key, adopted = {}, {}
    for v in variants:
        for stage, info in lineages.get(v.name, {}).items():
            if info.get("trained"):
                by_key.setdefault((stage, info["key"]), v.name)
            if info.get("adopted_from"):
                adopted[(stage, info["key"])] = info["adopted_from"]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for v in variants:
        out[v.name] = {}
        for stage, info in lineages.get(v.name, {}).items():
            who = by_key.get((stage, info["key"]))
            out[v.name][stage] = {
                "checkpoint": info["checkpoint"],
                "key": info["key"],
                "trained": who is not None,
                "trained_by": who,
            }
            if (stage, info["key"]) in adopted:
                out[v.name][stage]["adopted_from"] = adopted[(stage, info["key"])]
    return out


def build_comparison(
    plan: Plan, lineages: dict[str, dict[str, dict[str, Any]]], metrics: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """comparison.json: the plan and, per variant, its overrides, metrics (eval/metrics.json's
    ``results``: test set -> system -> rates and counts) and lineage."""
    lineage = finish_lineage(plan.variants, lineages)
    return {
        "name": plan.name,
        "work_dir": str(plan.root),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "profile": plan.base.profile,
        "vary": list(plan.vary),
        "store": str(store_dir(plan.root)),
        "variants": [
            {
                "name": v.name,
                "overrides": override_values(plan.configs[v.name], v),
                "metrics": metrics.get(v.name, {}).get("results", {}),
                "lineage": lineage.get(v.name, {}),
                "folder": str(plan.variant_dir(v)),
                "eval_report": str(plan.variant_dir(v) / "eval" / "report.md"),
            }
            for v in plan.variants
        ],
    }


def stage_cell(info: dict[str, Any] | None, variant: str) -> str:
    if not info:
        return "-"
    how = (
        "the run's"
        if info.get("adopted_from")
        else "reused"
        if not info["trained"]
        else "trained"
        if info["trained_by"] == variant
        else f"shared ({info['trained_by']})"
    )
    return f"`{info['key'][:8]}` {how}"


def _is_llmasr(system: str) -> bool:
    return system.startswith("llmasr-stage")


def result_rows(comparison: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant x test set x LLM-ASR system; then each other system (baseline, hypothesis
    file) once, as the first variant that has it scored it."""
    from tasks.eval_report import fmt_rate

    def row(variant: str, set_name: str, system: str, m: dict[str, Any]) -> dict[str, Any]:
        return {
            "variant": variant,
            "test set": set_name,
            "system": system,
            "N-WER": fmt_rate(m.get("n_wer"), m.get("n_errors", 0), m.get("words", 0)),
            "R-WER": fmt_rate(m.get("r_wer"), m.get("r_errors", 0), m.get("rare_words", 0)),
            "U-WER": fmt_rate(m.get("u_wer"), m.get("u_errors", 0), m.get("u_words", 0)),
            "O-WER": fmt_rate(m.get("o_wer"), m.get("o_errors", 0), m.get("o_words", 0)),
        }

    rows, seen = [], set()
    for v in comparison["variants"]:
        for set_name, per_system in v["metrics"].items():
            rows += [row(v["name"], set_name, s, m) for s, m in per_system.items() if _is_llmasr(s)]
    for v in comparison["variants"]:
        for set_name, per_system in v["metrics"].items():
            for s, m in per_system.items():
                if not _is_llmasr(s) and (set_name, s) not in seen:
                    seen.add((set_name, s))
                    rows.append(row("(baseline)", set_name, s, m))
    return rows


def final_system(per_system: dict[str, Any]) -> str | None:
    """The variant's most trained LLM-ASR system scored on a test set (llmasr-stage3, else 2, else 1)."""
    for stage in (3, 2, 1):
        if f"llmasr-stage{stage}" in per_system:
            return f"llmasr-stage{stage}"
    return None


def r_vs_n_png(comparison: dict[str, Any]) -> bytes | None:
    """R-WER (%) against N-WER (%): a point per variant (its most trained system), one panel per
    test set; baselines as grey crosses.  None when no variant has both rates."""
    sets: dict[str, list[tuple[str, float, float, bool]]] = {}
    for v in comparison["variants"]:
        for set_name, per_system in v["metrics"].items():
            system = final_system(per_system)
            points = sets.setdefault(set_name, [])
            if system:
                m = per_system[system]
                if m.get("n_wer") is not None and m.get("r_wer") is not None:
                    points.append((v["name"], 100 * m["n_wer"], 100 * m["r_wer"], True))
            for s, m in per_system.items():
                if (
                    not _is_llmasr(s)
                    and m.get("n_wer") is not None
                    and m.get("r_wer") is not None
                    and all(p[0] != s for p in points)
                ):
                    points.append((s, 100 * m["n_wer"], 100 * m["r_wer"], False))
    sets = {k: p for k, p in sets.items() if any(own for *_, own in p)}
    if not sets:
        return None
    plt = pyplot()

    fig, axes = plt.subplots(1, len(sets), figsize=(max(5.0, 4.8 * len(sets)), 4.2), squeeze=False)
    for ax, (set_name, points) in zip(axes[0], sets.items()):
        for (
            label,
            n,
            r,
            own,
        ) in points:  # variants in the legend (close points stay readable), baselines labelled
            if own:
                ax.scatter([n], [r], marker="o", label=label, zorder=3)
            else:
                ax.scatter([n], [r], marker="x", color="grey", zorder=3)
                ax.annotate(
                    label, (n, r), textcoords="offset points", xytext=(4, 4), fontsize=7, color="grey"
                )
        ax.legend(fontsize=7)
        ax.set_xlabel("N-WER (%)")
        ax.set_ylabel("R-WER (%)")
        ax.set_title(set_name)
        ax.margins(x=0.2, y=0.15)  # room for the baselines' labels
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_png(fig)


PLOT = "r_vs_n.png"


def render_report(comparison: dict[str, Any], rows: list[dict[str, Any]], plot: str | None) -> str:

    lineage = [
        {
            "variant": v["name"],
            "overrides": ", ".join(f"{k}={json.dumps(val)}" for k, val in v["overrides"].items()) or "(none)",
            **{f"stage {s}": stage_cell(v["lineage"].get(f"stage{s}"), v["name"]) for s in STAGES},
        }
        for v in comparison["variants"]
    ]
    md = [
        f"# Ablation `{comparison['name']}`: `{comparison['work_dir']}`\n",
        f"{len(comparison['variants'])} variants"
        + (f" of profile `{comparison['profile']}`" if comparison.get("profile") else "")
        + (
            f", a grid over {', '.join('`' + s + '`' for s in comparison['vary'])}"
            if comparison.get("vary")
            else ""
        )
        + ".\n",
        "\n## Variants and their stages\n\n",
        "Each stage's cache key (its first 8 characters): `trained` by this ablation for this variant, "
        "`shared` with the variant it was trained for, `reused` from an earlier ablation of this work dir, "
        "`the run's` adopted from the work dir's own checkpoints (`llmasr run` trained it, same key). "
        f"Stages with one key are one checkpoint, in `{comparison['store']}`.\n\n",
        markdown_table(lineage, empty="(no results)"),
        "\n## Results\n\n",
        "Every rate with its errors/words. Baselines and hypothesis files are the same in every variant: "
        "listed once.\n\n",
        markdown_table(rows, empty="(no results)"),
    ]
    if plot:
        md += [
            "\n## R-WER against N-WER\n\n",
            "Each variant's most trained system (stage 3 where evaluated); crosses: baselines.\n\n",
            f"![R-WER against N-WER]({plot})\n",
        ]
    else:
        md += ["\n## R-WER against N-WER\n\n", "No plot: no variant has both an N-WER and an R-WER.\n"]
    md += ["\n## Files\n\n", "- `comparison.json`: every variant's overrides, metrics and lineage\n"]
    md += [f"- {v['name']}: `{v['eval_report']}`\n" for v in comparison["variants"]]
    return "".join(md)


def write_outputs(
    out_dir: Path, comparison: dict[str, Any]
) -> tuple[str, bytes | None, list[dict[str, Any]]]:
    """comparison.json, report.md and r_vs_n.png (none when nothing to plot) in ``out_dir``;
    returns (report markdown, png or None, the results table's rows)."""
    from tasks.evaluate import _json_safe

    rows = result_rows(comparison)
    png = r_vs_n_png(comparison)
    if png is None:
        (out_dir / PLOT).unlink(missing_ok=True)
    else:
        with atomic_path(out_dir / PLOT) as tmp:
            tmp.write_bytes(png)
    report = render_report(comparison, rows, PLOT if png is not None else None)
    write_json(out_dir / "comparison.json", _json_safe(comparison))
    write_text(out_dir / "report.md", report)
    return report, png, rows


def inline_plot(report: str, png: bytes | None) -> str:
    """report.md with the plot inlined (for a Prefect markdown artifact)."""
    return inline_image(report, PLOT, png)
