"""llmasr.text.normalize is OpenAI Whisper's EnglishTextNormalizer (transformers' port), exactly."""

from __future__ import annotations

import hashlib
import json

import pytest

from llmasr.text import normalize, spelling_map

# sha256 of the map as json.dumps(sort_keys=True): openai/whisper's english.json
CANONICAL_SHA256 = "a9514fed7a5a462d97b9a7a2f93d38e7ec098ad2dd4171096b9d9e7b2a8ccdec"

# Whisper's own outputs (openai/whisper's whisper/normalizers/english.py), for the cases where a
# look-alike normaliser goes wrong: whisper-normalizer 0.1.15 turns "cause" into "because", "kinda"
# into "kind of", "sorta" into "sort of" and "dunno" into "do not know".
EXPECTED = {
    "What is the cause of your problems?": "what is the cause of your problems",
    "'Cause I said so.": "cause i said so",
    "I kinda like it, sorta.": "i kinda like it sorta",
    "I dunno, doctor.": "i dunno doctor",
    "Um, so, uh, I've had this pain for about two weeks. Hmm.": "so i have had this pain for about 2 weeks",
    "Mm-hmm. Mhm. Mmm, yeah.": "yeah",
    "It cost twenty five dollars and fifty cents.": "it cost $25.50",
    "That's £3.50, or €1,000,000 -- about $10 thousand.": "that is £3.50 or €1000000 about $10000",
    "He was born in nineteen eighty four, on the twenty-first of March.": (
        "he was born in 1984 on the 21st of march"
    ),
    "I won't, can't, shouldn't've, y'all ain't gonna wanna.": (
        "i will not can not should not have you all aint going to want to"
    ),
    "She's got the colour, the flavour and the behaviour of the centre.": (
        "she has got the color the flavor and the behavior of the center"
    ),
    "Organise the programme; analyse the tumour; paediatric anaesthetist.": (
        "organize the program analyze the tumor pediatric anesthetist"
    ),
    "Mr. Quilter and Dr. Smith met Mrs. Jones at St. Mary's.": (
        "mister quilter and doctor smith met missus jones at saint mary is"
    ),
    "[laughs] (inaudible) Okay, let's go.": "okay let us go",
    "The grey axe, the yoghurt and the mould.": "the gray ax the yogurt and the mold",
}

# More of Whisper's outputs, computed once from transformers' port (5.24.0) with Whisper's
# spelling map and fixed here as the contract (Whisper's number rules, odd as some are).
MORE = {
    "": "",
    "colour": "color",
    "$5.50": "$5.50",
    "   ": "",
    "$ 5": " 5",
    "Café naïve coöperate Œuvre straße.": "cafe naive cooperate oeuvre strasse",
    "one two three four five six seven eight nine ten eleven": "1234567891011",
    "a million and a half, two hundred and fifty thousand": "a 10000005250000",
    "The 1st, 2nd and 3rd places; 50% off; 3.14 and one point five.": (
        "the 1st 2nd and 3rd places 50% off 3.14 and one.5"
    ),
    "O'Brien's I'd've it's we're they'll": "0 brien is i would have it is we are they will",
    "Take 2 tablets, 3 times a day, 500 mg, 1,000 IU of vitamin D.": (
        "take 2 tablets 3 times a day 500 mg 1000 iu of vitamin d"
    ),
    "Covid-19 and H1N1, 24/7, 9:30 am.": "covid 19 and h one n one 24 7 9 30 am",
    "nought point five; oh seven; double-o seven": "nought .507007",
    "Hmm, um, uh... hmm.": ".",
    "The patient's haemoglobin was low; we'll organise an oesophagus scan at the centre.": (
        "the patient is hemoglobin was low we will organize an esophagus scan at the center"
    ),
    "I've been feeling kinda dizzy 'cause of the tablets, dunno why, sorta since Tuesday.": (
        "i have been feeling kinda dizzy cause of the tablets dunno why sorta since tuesday"
    ),
    "Twenty-two pounds fifty, five euros, a hundred and one dollars, ninety nine cents.": "£22 €55 a $101.99",
}


@pytest.mark.parametrize(("text", "expected"), [*EXPECTED.items(), *MORE.items()])
def test_normalize_gives_whispers_output(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_cause_stays_cause() -> None:
    assert normalize("the cause of your problems").split() == ["the", "cause", "of", "your", "problems"]
    assert normalize("what is the because") != normalize("what is the cause")


def test_none_and_empty() -> None:
    assert normalize(None) == "" and normalize("") == ""


def test_shipped_spelling_map_is_whispers() -> None:
    """The map is openai/whisper's english.json (1,739 entries), as transformers' hub normalizer.json."""
    mapping = spelling_map()
    assert len(mapping) == 1739
    assert (
        mapping["colour"] == "color" and mapping["mhm"] == "hmm" and mapping["organisation"] == "organization"
    )
    canonical = json.dumps(mapping, sort_keys=True, ensure_ascii=False).encode("utf-8")
    assert hashlib.sha256(canonical).hexdigest() == CANONICAL_SHA256
