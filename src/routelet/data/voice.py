"""Voice-like perturbations of a typed request: what a speaker says and a speech recogniser writes.

Two disjoint sets, so a model trained on one can be tested on the other:

  KINDS (the augment stage trains on these)
    filler    "um", "uh", "like", "you know" between words
    hedge     "could you maybe ..." / "so ..." before the request
    asr       ASR-style transcript: lowercase, no apostrophes, no punctuation
    stutter   a word said twice ("i i want") or restarted ("wh- what")
    numbers   digits spoken: "2" -> "two", "7:30" -> "seven thirty", "$5" -> "five dollars"

  voice_copy (evaluation only: scripts/augment_eval.py)
    homophones  "to" -> "two", "weather" -> "whether", "buy" -> "by" ...
    drop        a short function word lost ("book flight to rome")
    merges      run-together speech: "want to" -> "wanna", "let me" -> "lemme"
    run_on      no sentence boundary: "... and thanks", "... thank you"
    digits      the recogniser's number format: "twenty five" -> "25", "five dollars" -> "$5"

Every function is seeded by its caller's `random.Random` and leaves redaction placeholders
("<num>", "<secret>") alone. Callers redact before perturbing: "pin 7731" must become
"pin <secret>" before a number could be spelled out where no pattern would find it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
       "seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
ORDINALS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth", "nine": "ninth",
            "twelve": "twelfth"}
FILLERS = ["um", "uh", "like", "you know", "er", "hmm"]
HEDGES = ["could you maybe", "can you please", "could you", "i need you to", "please", "can you like"]
# Before a question or a statement ("i need ..."), a lead-in; before a command, a hedge.
LEAD_INS = ["so", "okay so", "um so", "hey", "quick question", "right so"]
LEAD_IN_WORDS = set("what whats what's how when where who why which is are am do does did can could will would "
                    "should was were have has i i'm im i'd my it it's its there the this that we our".split())
_PLACEHOLDER = re.compile(r"<[a-z]+>")
_PUNCT = re.compile(r"[.,!?;:\"()\[\]{}…]+")
_NUMBER = re.compile(r"(?<![\w.,:])(\$)?(\d{1,6}(?:,\d{3})*)(?::(\d{2}))?(?:\.(\d+))?(%|st|nd|rd|th|am|pm)?(?!\w)")


def number_words(n: int) -> str:
    """n >= 0 in words, as said aloud: 2015 -> "two thousand fifteen"."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    for size, name in ((10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            rest = n % size
            return f"{number_words(n // size)} {name}" + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError(n)


def ordinal(words: str) -> str:
    *head, last = words.split()
    if last in ORDINALS:
        last = ORDINALS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


def _spoken(match: re.Match) -> str:
    dollar, whole, minutes, decimals, suffix = match.groups()
    words = number_words(int(whole.replace(",", "")))
    if minutes is not None:
        words += "" if minutes == "00" else " " + ("oh " + ONES[int(minutes)] if minutes[0] == "0"
                                                    else number_words(int(minutes)))
    if decimals is not None:
        words += " point " + " ".join(ONES[int(d)] for d in decimals)
    if suffix in ("st", "nd", "rd", "th"):
        words = ordinal(words)
    elif suffix == "%":
        words += " percent"
    elif suffix:
        words += f" {suffix}"
    return words + (" dollars" if dollar else "")


# ---- the training kinds: (text, rng) -> text ------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


def filler(text: str, rng: random.Random) -> str:
    words = _words(text)
    for _ in range(rng.choice((1, 1, 2))):
        words.insert(rng.randrange(len(words) + 1), rng.choice(FILLERS))
    return " ".join(words)


def hedge(text: str, rng: random.Random) -> str:
    first = _words(text)[0].lower().strip("'\"")
    return f"{rng.choice(LEAD_INS if first in LEAD_IN_WORDS else HEDGES)} {text}"


def asr(text: str, rng: random.Random) -> str:
    spoken = _PUNCT.sub(" ", text.lower().replace("'", "").replace("’", ""))
    return " ".join(spoken.split())


def stutter(text: str, rng: random.Random) -> str:
    words = _words(text)
    candidates = [i for i, w in enumerate(words[:4]) if w.isalpha()] or [0]
    i = rng.choice(candidates)
    word = words[i]
    repeat = f"{word[:2]}-" if len(word) > 3 and rng.random() < 0.3 else word
    return " ".join(words[:i] + [repeat] + words[i:])


def numbers(text: str, rng: random.Random) -> str:
    return _NUMBER.sub(_spoken, text)


def _has_number(text: str) -> bool:
    return bool(_NUMBER.search(_PLACEHOLDER.sub(" ", text)))


KINDS: dict[str, Callable[[str, random.Random], str]] = {
    "numbers": numbers, "asr": asr, "stutter": stutter, "filler": filler, "hedge": hedge}
# Whether a kind can change a text at all (asr on an already bare lowercase text cannot).
APPLIES: dict[str, Callable[[str], bool]] = {
    "numbers": _has_number,
    "asr": lambda text: text != asr(text, random.Random(0)),
    "stutter": lambda text: bool(text.split()),
    "filler": lambda text: bool(text.split()),
    "hedge": lambda text: bool(text.split()),
}


def perturb(text: str, kinds: list[str], rng: random.Random) -> str:
    """Apply `kinds` in KINDS order (numbers before asr strips "$" and ":")."""
    for kind in KINDS:
        if kind in kinds:
            text = KINDS[kind](text, rng)
    return text


# ---- the evaluation copy: other perturbations than any kind above ----------------------------

HOMOPHONES = {"to": "two", "two": "to", "too": "to", "for": "four", "four": "for", "there": "their",
              "their": "there", "right": "write", "write": "right", "weather": "whether", "know": "no",
              "no": "know", "buy": "by", "by": "buy", "hear": "here", "here": "hear", "week": "weak",
              "new": "knew", "one": "won", "our": "are", "wait": "weight", "mail": "male",
              "meet": "meat", "flower": "flour", "sell": "cell", "sent": "cent", "due": "do", "eight": "ate",
              "be": "bee", "see": "sea", "would": "wood", "where": "wear", "which": "witch", "whole": "hole"}
SHORT_WORDS = {"the", "a", "an", "to", "of", "is", "are", "my", "me", "for", "in", "on", "at", "it", "please"}
MERGES = {("want", "to"): "wanna", ("going", "to"): "gonna", ("got", "to"): "gotta", ("let", "me"): "lemme",
          ("give", "me"): "gimme", ("kind", "of"): "kinda", ("out", "of"): "outta", ("have", "to"): "hafta",
          ("do", "you"): "d'you", ("you", "all"): "y'all", ("i", "am"): "i'm", ("what", "is"): "what's"}
RUN_ONS = ["and thanks", "thank you", "thanks a lot", "and that's it", "that's all", "and yeah"]
_SPOKEN_NUMBER = re.compile(r"\b(?:(?:twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)(?: (?:one|two|three|"
                            r"four|five|six|seven|eight|nine))?|zero|one|two|three|four|five|six|seven|eight|nine|"
                            r"ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen)"
                            r"(?: (hundred|thousand))?( dollars| percent)?\b")
_VALUES = {word: i for i, word in enumerate(ONES)} | {word: 10 * i for i, word in enumerate(TENS) if i >= 2}


def _digits(match: re.Match) -> str:
    words = match.group(0).split()
    unit = words.pop() if words[-1] in ("dollars", "percent") else None
    scale = {"hundred": 100, "thousand": 1000}.get(words[-1], 1)
    if scale > 1:
        words.pop()
    value = sum(_VALUES[word] for word in words) * scale
    return f"${value}" if unit == "dollars" else f"{value}%" if unit == "percent" else str(value)


def homophones(words: list[str], rng: random.Random) -> list[str]:
    spots = [i for i, w in enumerate(words) if w.lower() in HOMOPHONES]
    for i in rng.sample(spots, max(1, len(spots) // 2)):
        words[i] = HOMOPHONES[words[i].lower()]
    return words


def drop(words: list[str], rng: random.Random) -> list[str]:
    spots = [i for i, w in enumerate(words) if w.lower() in SHORT_WORDS]
    return words[:(i := rng.choice(spots))] + words[i + 1:]


def merges(words: list[str], rng: random.Random) -> list[str]:
    spots = [i for i in range(len(words) - 1) if (words[i].lower(), words[i + 1].lower()) in MERGES]
    i = rng.choice(spots)
    return words[:i] + [MERGES[words[i].lower(), words[i + 1].lower()]] + words[i + 2:]


def run_on(words: list[str], rng: random.Random) -> list[str]:
    return words + rng.choice(RUN_ONS).split()


def digits(words: list[str], rng: random.Random) -> list[str]:
    return _SPOKEN_NUMBER.sub(_digits, " ".join(words)).split()


# In the order they are applied: numbers before a homophone turns "two" into "to", and so on.
EVAL_PERTURBATIONS: dict[str, tuple[Callable, Callable[[list[str]], bool]]] = {
    "digits": (digits, lambda ws: bool(_SPOKEN_NUMBER.search(" ".join(ws)))),
    "merges": (merges, lambda ws: any((a.lower(), b.lower()) in MERGES for a, b in zip(ws, ws[1:]))),
    "drop": (drop, lambda ws: len(ws) >= 4 and any(w.lower() in SHORT_WORDS for w in ws)),
    "homophones": (homophones, lambda ws: any(w.lower() in HOMOPHONES for w in ws)),
    "run_on": (run_on, lambda ws: bool(ws)),
}


def voice_copy(texts: list[str], seed: int = 0, per_text: int = 2) -> list[str]:
    """A voice-like copy of an evaluation set: up to `per_text` of EVAL_PERTURBATIONS per text
    (those that apply, at least one), seeded per text so a row's copy never depends on the others."""
    copies = []
    for text in texts:
        rng = random.Random(f"{seed}\0{text}")
        words = text.split()
        usable = [name for name, (_, applies) in EVAL_PERTURBATIONS.items() if applies(words)]
        for name in sorted(rng.sample(usable, min(per_text, len(usable))), key=list(EVAL_PERTURBATIONS).index):
            change, applies = EVAL_PERTURBATIONS[name]
            if applies(words):  # an earlier change may have used up the spot ("want to" -> "wanna")
                words = change(words, rng)
        copies.append(" ".join(words))
    return copies
