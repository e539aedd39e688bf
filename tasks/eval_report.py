"""The evaluation's report: report.md (the table of every rate with its counts, how R was built,
each test set's rare words, the problems, the files) and wer.png, both from metrics.json's content.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmasr.report import figure_png, markdown_table, pyplot


def fmt_rate(rate: float | None, errors: int, words: int) -> str:
    """'12.3% (45/366)'; 'n/a (0 words)' where there is nothing to divide by -- never 0."""
    if rate is None:
        return f"n/a ({errors}/{words})" if errors else "n/a (0 words)"
    return f"{100 * rate:.1f}% ({errors}/{words})"


def rtf_label(row: dict[str, Any], kind: str | None) -> str:
    """The RTF cell: the ratio, or why there is none (a hypothesis file has no decoding time, a set
    without audio nothing to divide by)."""
    if row.get("rtf") is not None:
        return f"{row['rtf']:.3f}" + (" (cached)" if row.get("cached") else "")
    if kind == "hyps" or row.get("decode_s") is None:
        return "n/a (hyp file)"
    return "n/a (no audio)" if not row.get("audio_s") else "n/a"


def report_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's table: one row per test set x system of ``metrics`` (every set in it), every
    rate with its counts."""
    kinds = {s["name"]: s["kind"] for s in metrics["systems"]}
    rows = []
    for set_name, per_system in metrics["results"].items():
        total = metrics["test_sets"].get(set_name, {}).get("utterances", 0)
        for system, m in per_system.items():
            failed = m.get("failed_utterances", m.get("failed", 0))
            rows.append(
                {
                    "test set": set_name,
                    "system": system,
                    "utts": f"{total} ({failed} failed)" if failed else str(total),
                    "words": m["words"],
                    "rare words": m["rare_words"],
                    "O-WER": fmt_rate(m["o_wer"], m["o_errors"], m["o_words"]),
                    "N-WER": fmt_rate(m["n_wer"], m["n_errors"], m["words"]),
                    "R-WER": fmt_rate(m["r_wer"], m["r_errors"], m["rare_words"]),
                    "U-WER": fmt_rate(m["u_wer"], m["u_errors"], m["u_words"]),
                    "RTF": rtf_label(m, kinds.get(system)),
                }
            )
    return rows


def render_report(
    metrics: dict[str, Any], rows: Sequence[dict[str, Any]], plot_name: str | None = "wer.png"
) -> str:
    """report.md: the table, how R was built, each test set's rare words, the problems, the files."""
    info = metrics["rare_words"]
    lines = [f"# Evaluation: `{metrics['work_dir']}`", ""]
    lines.append(
        "Systems: " + ", ".join(f"`{s['name']}` ({s['kind']})" for s in metrics["systems"]) + "."
        if metrics["systems"]
        else "Systems: none."
    )
    s = metrics["settings"]
    lines += [
        f"Decoding: {_decoding_text(s)}.",
        "",
        "## Results",
        "",
        "Corpus-level rates, errors/words beside each (O-WER on words as written, N-/R-/U-WER on "
        "Whisper-normalised words; R = rare words, U = the rest). R-WER is n/a where a test set has no rare "
        "reference words. RTF = decode time / audio time. Every test set evaluated in this work dir is here; "
        "a set's results are those of its latest evaluation (when, below).",
        "",
        markdown_table(rows, empty="(no results)"),
    ]
    if plot_name:
        lines += [f"![WER per system and test set]({plot_name})", ""]
    else:
        lines += ["No WER chart: no system has a rate to plot (no reference words were scored).", ""]
    lines += ["## Rare words", "", _rare_rule_text(info), ""]
    for name, ts in metrics["test_sets"].items():
        lines.append(_test_set_text(name, ts, info, s))
    lines += ["", "## Problems", ""]
    problems = metrics["problems"]
    lines += [f"- {p}" for p in problems] if problems else ["None."]
    lines += ["", "## Files", ""]
    for name, per_system in metrics["files"].items():
        for system, files in per_system.items():
            lines.append(f"- {name} / {system}: " + ", ".join(f"[{k}]({v})" for k, v in files.items()))
    return "\n".join(lines) + "\n"


def _decoding_text(s: dict[str, Any]) -> str:
    return (
        f"beam {s['num_beams']}, no repeated {s['no_repeat_ngram_size']}-grams, new tokens <= "
        f"ceil({s['tokens_per_second']:g} x seconds) + {s['min_new_tokens']} (cap {s['max_new_tokens']}); "
        f"utterances over {s['max_piece_s']:g} s cut by VAD"
    )


def _rare_rule_text(info: dict[str, Any]) -> str:
    """How R was built (metrics.json's ``rare_words``), as one sentence."""
    if info["max_train_count"] >= 0:
        rule = (
            "never seen in"
            if info["max_train_count"] == 0
            else f"seen at most {info['max_train_count']} times in"
        )
        base = f"R = the words {rule} the training transcripts"
    else:
        base = "R = the words of the word list alone"
    src = (
        f"{info['train_texts']} kept pseudo-labels, {info['train_words']} words, {info['vocabulary']} "
        f"distinct, from {info['source']}"
        if info["source"]
        else "no training transcripts found"
    )
    if info.get("common_words"):
        base += (
            f" ({src}), except the {info['common_words']} most frequent English words "
            f"({info['common_source']}, {info['common_types']} words once normalised), which are never rare "
            "by count"
        )
    else:
        base += f" ({src})" + (
            "; no common-word exclusion (eval.common_words 0)" if info["max_train_count"] >= 0 else ""
        )
    return (
        base
        + (
            f"; plus the {info['word_list_words']} words of the word list `{info['word_list']}`, rare even "
            "when common"
            if info["word_list"]
            else ""
        )
        + "."
    )


def _test_set_text(name: str, ts: dict[str, Any], info: dict[str, Any], settings: dict[str, Any]) -> str:
    """A test set's line: its audio and rare words, when it was evaluated, and how that differs from
    the latest evaluation's settings or rare-word set (a set kept from an earlier one)."""
    unseen = ts["rare_unseen_types"]
    rule = ts["rare_rule"]
    excluded = rule["common_excluded_examples"]
    own_info = ts.get("rare_words") or info
    when = f" Evaluated {ts['evaluated']}" if ts.get("evaluated") else ""
    if ts.get("settings") not in (None, settings):
        when += f", decoded with {_decoding_text(ts['settings'])}"
    if own_info != info:
        when += f", scored with the rare-word set of that evaluation ({_rare_rule_text(own_info)[:-1]})"
    return (
        f"- **{name}** (`{ts['path']}`): {ts['utterances']} utterances, {ts['audio_s']:.1f} s of audio; "
        f"{ts['rare_types']} distinct rare words ({ts['rare_tokens']} occurrences) in the references, "
        f"{unseen} of them truly unseen in the training labels"
        + (
            f": {', '.join(ts['rare_examples'])}"
            + (" ..." if ts["rare_types"] > len(ts["rare_examples"]) else "")
            if ts["rare_examples"]
            else ""
        )
        + f". Training-count rule: {rule['by_count_types']} words ({rule['by_count_tokens']} occurrences)"
        + (
            f"; common-word rule: {rule['common_excluded_types']} of them excluded "
            f"({rule['common_excluded_tokens']} occurrences"
            + (
                f": {', '.join(excluded)}" + (" ..." if rule["common_excluded_types"] > len(excluded) else "")
                if excluded
                else ""
            )
            + ")"
            if own_info.get("common_words")
            else ""
        )
        + (
            f"; word list: {rule['word_list_added_types']} words added ({rule['word_list_added_tokens']} "
            "occurrences)"
            if own_info["word_list"]
            else ""
        )
        + "."
        + (when + "." if when else "")
    )


WER_KEYS = (("n_wer", "N-WER"), ("r_wer", "R-WER"), ("u_wer", "U-WER"))


def wer_plot_png(results: dict[str, dict[str, dict[str, Any]]]) -> bytes | None:
    """Grouped bars: N-, R- and U-WER (%) of each system, one panel per test set of ``results``
    (metrics.json's: set -> system -> row); n/a rates marked.  None when no rate exists at all
    (nothing was scored): an empty chart says nothing."""
    if not any(
        m.get(key) is not None
        for per_system in results.values()
        for m in per_system.values()
        for key, _ in WER_KEYS
    ):
        return None
    plt = pyplot()

    top = 150.0  # bars above this (a random or looping model) are clipped and labelled with their value
    names = [n for n, per_system in results.items() if per_system]
    fig, axes = plt.subplots(1, len(names), figsize=(max(5.0, 4.5 * len(names)), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        mine = list(results[name].items())
        width = 0.8 / len(mine)
        values_all = []
        for k, (system, m) in enumerate(mine):
            values = [m.get(key) for key, _ in WER_KEYS]
            values_all += [v for v in values if v is not None]
            xs = [i + (k - (len(mine) - 1) / 2) * width for i in range(len(WER_KEYS))]
            bars = ax.bar(
                xs, [min(100 * v, top) if v is not None else 0.0 for v in values], width, label=system
            )
            for x, v, bar in zip(xs, values, bars):
                if v is None:
                    ax.text(x, 0.5, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
                    bar.set_alpha(0.0)
                elif 100 * v > top:
                    ax.text(
                        x,
                        top,
                        f"{100 * v:.0f}%",
                        ha="center",
                        va="top",
                        fontsize=7,
                        rotation=90,
                        color="white",
                    )
        ax.set_xticks(range(len(WER_KEYS)), [label for _, label in WER_KEYS])
        ax.set_title(name)
        ax.set_ylabel("WER (%)")
        highest = max((100 * v for v in values_all), default=0.0)
        ax.set_ylim(0, top if highest > top else max(10.0, 1.15 * highest))  # all-zero bars still get an axis
        ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)
