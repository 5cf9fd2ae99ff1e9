"""The one preprocess: normalisation plus redaction, used at training, labeling and serving.

`preprocess(text)` is what every model sees; `redact(text)` alone is for places that keep the
user's casing (quarantine files, teacher prompts). Both are idempotent: running them on their
own output changes nothing, so a stored, already-redacted row can go through the pipeline again.
Bump PREPROCESS_VERSION whenever the output for some input changes: it is recorded in every
router folder and keys the embedding cache.
"""

from __future__ import annotations

import re
import unicodedata

PREPROCESS_VERSION = "1"

# Placeholders are lowercase words in angle brackets, so normalisation leaves them alone and no
# pattern below matches them again.
EMAIL, URL, KEY, CARD, NUM, SECRET = "<email>", "<url>", "<key>", "<card>", "<num>", "<secret>"

_SECRET_WORDS = (
    r"pass(?:word|wd|phrase|code)?|pwd|pin(?:\s*code)?|secret|token|api[\s_-]?key|access[\s_-]?key"
    r"|private[\s_-]?key|client[\s_-]?secret|auth(?:orization)?|bearer|credentials?|otp"
    r"|security[\s_-]?code|cvv|cvc|ssn"
)

# Order matters: whole structures (URLs with credentials, e-mails, key shapes, cards) go before
# the generic digit-run rule, which would otherwise cut them into pieces. Every rule ignores case:
# `redact` runs on cased text (quarantine), `preprocess` on lowercased text.
_VALUE = r"(?!<)\S+"
# After a bare keyword or "is", only a value that looks like a secret (a digit, or a symbol inside
# it) is taken: "my pin is blocked" is a banking request, "my pin is 7a!x" is a leak.
_SECRET_LOOKING = r"(?!<)(?=\S*\d|\w*[^\w\s]+\w)\S+"
_RULES: list[tuple[re.Pattern[str], str]] = [
    # scheme://user:password@host/... keeps nothing of the URL: the host may be private too.
    (r"\b[a-z][a-z0-9+.-]*://[^\s/@:]+:[^\s/@]*@\S+", URL),
    (r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b", EMAIL),
    # JSON web tokens: three base64url parts, the first two starting with '{"' encoded (eyJ).
    (r"\beyJ[\w-]{5,}\.eyJ[\w-]{5,}\.[\w-]+", KEY),
    # Provider key shapes: OpenAI/Anthropic sk-..., AWS AKIA/ASIA, GitHub gh?_, Slack xox?-,
    # Google AIza, Stripe (sk|pk|rk)_live_.
    (
        r"\b(?:sk-[\w-]{16,}|(?:AKIA|ASIA)[0-9A-Z]{16}|gh[pousr]_[0-9A-Z]{20,}"
        r"|xox[abposr]-[\w-]{10,}|AIza[\w-]{30,}|[spr]k_(?:live|test)_[0-9A-Z]{16,})",
        KEY,
    ),
    # Card numbers: 13 to 19 digits, optionally grouped by spaces or dashes.
    (r"\b\d(?:[ -]?\d){12,18}\b", CARD),
    # "password: hunter2", "token=abc" -> keep the keyword, drop the value.
    (rf"\b({_SECRET_WORDS})(\s*[:=]\s*){_VALUE}", rf"\1\2{SECRET}"),
    (rf"\b({_SECRET_WORDS})(\s+(?:is\s+|was\s+)?){_SECRET_LOOKING}", rf"\1\2{SECRET}"),
    # Long opaque strings (letters and digits mixed, 24+ chars) are keys more often than words.
    (r"\b(?=[\w-]*\d)(?=[\w-]*[a-z])[\w-]{24,}", KEY),
    (r"\d{4,}", NUM),
]
_RULES = [(re.compile(pattern, re.I), placeholder) for pattern, placeholder in _RULES]

_SPACE = re.compile(r"\s+")


def redact(text: str) -> str:
    """Replace secrets, e-mail addresses, keys, card numbers and digit runs of 4+ by placeholders."""
    for pattern, placeholder in _RULES:
        text = pattern.sub(placeholder, text)
    return text


def normalise(text: str) -> str:
    """Unicode NFKC, lowercase, one space between words: what both TF-IDF and the encoders want."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().lower()


def preprocess(text: str) -> str:
    """Normalise, then redact. Normalising first lets the patterns see one canonical form."""
    return redact(normalise(text))
