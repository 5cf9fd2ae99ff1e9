"""The one preprocess: normalisation plus redaction, used at training, labeling and serving.

`preprocess(text)` is what every model sees; `redact(text)` alone is for places that keep the
user's casing (quarantine files, teacher prompts, reports, logs). Both are idempotent: running them
on their own output changes nothing, so a stored, already-redacted row can go through the pipeline
again. Bump PREPROCESS_VERSION whenever the output for some input changes: it is recorded in every
router folder and keys the embedding cache.

Redaction runs in time linear in the input, whatever the input: every pattern is an RE2 automaton
(google-re2, no backtracking), each rule is one pass over the text per round (at most _MAX_ROUNDS,
see redact), and the Python deciders below look at each match once. What it removes, and what it
keeps on purpose:
  secrets    private key blocks, URLs with credentials, e-mails, JWTs, provider key shapes, long
             opaque tokens (letters and digits mixed), the value after a secret's name
             (`password: x`, `aws_secret_access_key = x`, `Authorization: Basic x`, `my pin is 7731`)
  numbers    IBANs, card numbers, US SSNs, phone numbers (international, North American, trunk-0
             national, and local 555-0132 after a word like "call"), any run of 7+ digits
  kept       what carries a request's intent: dates, times, amounts, years, zip codes, flight and
             order numbers up to 6 digits, and words about secrets ("my pin is blocked").
  missed     a secret with no name before it and no shape ("hunter2 is my password"), and a value
             of plain words after a bare space or a spaced dash ("my password is sunshine").
`redact` reads digits of other scripts ("４１１１") as the ASCII digits they are and writes them so.

    python -c "from routelet.serving.preprocess import preprocess; print(preprocess('PIN: 7731'))"
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Callable

try:
    import re2
except ImportError as error:  # a core dependency: say which package brings it
    raise ImportError("routelet's redaction needs google-re2: pip install google-re2") from error

PREPROCESS_VERSION = "2"

# Placeholders are lowercase words in angle brackets, so normalisation leaves them alone and no
# rule below matches them again ('<' ends every run a rule looks for).
EMAIL, URL, KEY, SECRET = "<email>", "<url>", "<key>", "<secret>"
CARD, IBAN, SSN, PHONE, NUM = "<card>", "<iban>", "<ssn>", "<phone>", "<num>"
_KEY, _IBAN, _PHONE, _SECRET = (p.encode() for p in (KEY, IBAN, PHONE, SECRET))

# The few Python regexes here are linear (a character class, no nested repeats) and each reads
# one match or one value.
_DIGITS = re.compile(rb"[0-9]*")
_SPACES_ONLY = re.compile(rb"\s+")
_KEY_PIECES = re.compile(rb"[_./+=-]+")


def _compile(pattern: str) -> "re2._Regexp":
    """RE2 works on the UTF-8 bytes (redact encodes once per call): `\\w`, `\\d` and `\\b` are ASCII."""
    return re2.compile(("(?i)" + pattern).encode())


def _put(placeholder: str) -> Callable[["re2._Match"], bytes]:
    """A replacement that is always `placeholder`."""
    data = placeholder.encode()
    return lambda match: data


# ---- deciders: each sees one match and returns its replacement (the match itself to keep it) ----

def _key_like(token: bytes) -> bool:
    """Opaque keys mix letters and digits inside one piece and use many distinct characters; long
    identifiers (`test_case_2_for_login`) keep letters and digits in separate pieces."""
    low = token.lower()
    pieces = _KEY_PIECES.split(low)
    mixed = any(p.isalnum() and not p.isalpha() and not p.isdigit() for p in pieces)
    distinct = len(set(low))
    if mixed:
        return distinct >= 10
    # Base64 with no digit at all (rare, but a 40-character AWS secret can be one): long, varied,
    # and with the base64 symbols inside.
    return len(low) >= 30 and distinct >= 20 and (b"+" in low or b"/" in low)


def _token(match) -> bytes:
    return _KEY if _key_like(match.group()) else match.group()


def _iban(match) -> bytes:
    """Mod-97-valid IBANs, and IBAN-shaped strings that are mostly digits (a mistyped IBAN is still
    an account): both go. Words that only look the shape ("ab12 cdef ghij klmn") stay."""
    compact = _SPACES_ONLY.sub(b"", match.group()).upper()
    if not 15 <= len(compact) <= 34:
        return match.group()
    moved = compact[4:] + compact[:4]
    valid = int("".join(str(int(chr(c), 36)) for c in moved)) % 97 == 1
    digits = sum(c in b"0123456789" for c in compact[4:])
    return _IBAN if valid or digits >= 10 else match.group()


def _phone(match) -> bytes:
    found = match.group()
    if found[:1].isalpha():  # "call me on 555-0132": the context stays, the 8-character number goes
        return found[:-8] + _PHONE
    return _PHONE if sum(c in b"0123456789" for c in found) >= 7 else found  # not "+1 for this"


def _leading_code(match) -> bytes:
    found = match.group()
    return _SECRET + found[_DIGITS.match(found).end():]


# ---- the rules, in order: whole structures first, then numbers, then named values --------------

_PROVIDER_KEYS = "|".join([
    r"sk-(?:ant-|proj-)?[\w-]{16,}",  # OpenAI, Anthropic
    r"(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[A-Z0-9]{16}",  # AWS key ids
    r"gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,}|glpat-[\w-]{20,}",  # GitHub, GitLab
    r"xox[abposr]-[\w-]{10,}|xapp-[\w-]{10,}",  # Slack
    r"AIza[\w-]{30,}",  # Google
    r"(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|whsec_[A-Za-z0-9]{16,}",  # Stripe
    r"npm_[A-Za-z0-9]{30,}|hf_[A-Za-z]{30,}|shp(?:at|ss|ca|pa)_[a-f0-9]{32}|dop_v1_[a-f0-9]{64}",
    r"SG\.[\w-]{16,}\.[\w-]{16,}|key-[a-f0-9]{32}|SK[a-f0-9]{32}",  # SendGrid, Mailgun, Twilio
])

_RULES: list[tuple["re2._Regexp", Callable[["re2._Match"], bytes]]] = [
    # A private key block, to its END line or, pasted half, to the end of the text.
    (_compile(r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?s:.)*?"
              r"(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|\z)"), _put(KEY)),
    # scheme://user:password@host/... keeps nothing of the URL: the host may be private too.
    # Webhook URLs carry their secret in the path.
    (_compile(r"[a-z][a-z0-9+.-]*://[^\s/@]+@\S*"
              r"|\bhttps?://(?:hooks\.slack\.com|discord(?:app)?\.com/api/webhooks)/\S*"), _put(URL)),
    (_compile(r"[\pL\pN_.%+-]+@[\pL\pN-]+(?:\.[\pL\pN-]+)+"), _put(EMAIL)),
    # JSON web tokens (two base64url parts starting with '{"' encoded: eyJ) and provider key shapes.
    (_compile(rf"\beyJ[\w-]{{5,}}\.eyJ[\w-]{{5,}}\.[\w-]*|\b(?:{_PROVIDER_KEYS})"), _put(KEY)),
    (_compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"), _iban),
    # Long runs of base64/base64url characters; _key_like decides. Before the digit rules, which
    # would otherwise cut a hex key into pieces too short to recognise.
    (_compile(r"[A-Za-z0-9+/_-]{20,}={0,2}"), _token),
    # Card numbers: 4-4-4-4(-1..3) spaced, dashed or dotted, Amex/Diners 4-6-4/5, 13 to 19 digits.
    (_compile(r"\b(?:\d{4}[ .-]?){3}\d{4}(?:[ .-]?\d{1,3})?\b|\b\d{4}[ -]?\d{6}[ -]?\d{4,5}\b|\b\d{13,19}\b"),
     _put(CARD)),
    (_compile(r"\b\d{3}[- ]\d{2}[- ]\d{4}\b"), _put(SSN)),
    # International (+ or 00), North American, trunk-0 national, and local after a context word.
    # Patterns carry no capture groups: RE2 then finds matches with its DFA alone, several times
    # faster, and the deciders read the matched bytes instead.
    (_compile(r"(?:\+|\b00)\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){1,6}"
              r"|(?:\b1[ .-]?)?(?:\(\d{3}\)|\b\d{3})[ .-]?\d{3}[ .-]?\d{4}\b"
              r"|\b0\d{2,4}[ .-]?\d{3,4}[ .-]?\d{3,4}\b"
              r"|\b(?:call|phone|cell|mobile|tel|text|dial|fax|ring|reach|number|contact|whatsapp|sms)\b"
              r"[^\d\n<]{0,24}?\b[2-9]\d{2}[-. ]\d{4}\b"), _phone),
    # Any other run of 7+ digits (account numbers); shorter ones are order numbers, years, zips.
    (_compile(r"\d{7,}"), _put(NUM)),
]
# A code named after it: "make 1234 the pin", "use 0000 as my passcode" (see _redact_once).
_CODE_BEFORE_NAME = _compile(r"\b\d{3,6}(?:\s+(?:as|is|was|the|my|our|new|to|be|for))+"
                             r"\s+(?:pin|pincode|passcode|password|cvv|cvc|otp)\b")

# ---- named values: "password: x", "aws_secret_access_key = x", "my pin is 7731" ---------------

# Words that make a name worth a look; _named decides whether the whole name is a secret's.
_CORE = (r"pass|pwd|secret|token|key|pin|otp|cvv|cvc|ssn|auth|bearer|credential|signature|sig|cookie"
         r"|session|code|number|social|security|passport|account|routing|api|access|private|client"
         r"|verif|login|sms|2fa|mfa|one[ -]time")
_NAME = (rf"(?:\b(?:door|gate|alarm|lock|entry|garage)[ \t]+)?"
         rf"[\w.-]*(?:{_CORE})[\w.-]*(?:[ \t]+[A-Za-z]*(?:{_CORE})[A-Za-z]*){{0,3}}")
# Between the name and a value: what it is for ("password for the wifi is x"), then filler words.
_FOR = r"(?:\s+(?:for|on|of|at)\s+(?:(?:the|my|our|your)\s+)?[^\s<]+)?"
_FILL = r"(?:\s+(?:is|was|are|now|still|set|changed|reset|updated|to|be|will|should|remains)\b)*"
# A strong separator (":", "=", "->") says a value follows; a bare space or a spaced dash (also a
# dash between clauses) only suggests it. _strong tells them apart from the matched bytes (no
# capture groups: see the phone rule).
_SEP = r"[\"']?\s*(?:=>|->|[:=])\s*|\s+--?>?\s+|\s+"
_NAMED_VALUE = _compile(rf"{_NAME}{_FOR}{_FILL}(?:{_SEP})")

_EXACT = frozenset(b"""password passwords passwd pwd pass passphrase passcode pincode secret secrets token tokens
    key keys apikey pin pins otp cvv cvc cvv2 cvc2 ssn auth authorization bearer credential credentials
    signature sig cookie session sessionid sid passport""".split())
_SUFFIXES = (b"password", b"passwd", b"pwd", b"passphrase", b"secret", b"token", b"apikey", b"accesskey",
             b"secretkey", b"privatekey", b"accountkey", b"sharedkey", b"signature", b"credentials")
_PHRASES = (b"api key", b"access key", b"secret key", b"private key", b"client secret", b"pin code", b"pin number",
            b"verification code", b"security code", b"auth code", b"login code", b"access code", b"one time code",
            b"sms code", b"2fa code", b"mfa code", b"account number", b"routing number", b"sort code",
            b"passport number", b"social security", b"auth token", b"session token", b"session id",
            b"door code", b"gate code", b"alarm code", b"lock code", b"entry code", b"garage code")
# Names a bare space may follow ("my password hunter2"); "key", "cookie", "signature" need ":" or "=".
_SPOKEN = frozenset(b"""password passwords passwd pwd passphrase passcode pincode secret token pin otp cvv cvc
    cvv2 cvc2 ssn bearer credentials authorization apikey""".split())
_SCHEMES = frozenset(b"basic bearer digest token negotiate ntlm apikey hoba mutual aws4-hmac-sha256".split())
_MAX_QUOTED = 256
_NON_ALNUM = re.compile(rb"[^a-z0-9]+")
_NONSPACE = re.compile(rb"\S*")  # used only as match(text, pos): linear in the value it reads
_SPACES = re.compile(rb"[ \t]*")
_DIGIT = re.compile(rb"[0-9]")
# A symbol between word characters ("p@ss", "abc.def"); apostrophes and hyphens join words.
_INNER_SYMBOL = re.compile(rb"\w[!-&(-,./:-@\[-^`{-~]+\w")
_REDACTED = re.compile(rb"(?:<[a-z]+>|[^\w<])*")  # placeholders and punctuation only
_JOINS = re.compile(rb"[\s@/]")


def _strong(head: bytes) -> bool:
    """Whether a name match (name, filler, separator; trailing space stripped) ends in ':', '=',
    '->' or '=>': the name's own characters never do."""
    return head[-1:] in (b":", b"=", b">")


@functools.lru_cache(maxsize=4096)
def _named(head: bytes, spoken_only: bool) -> bool:
    """Whether `head` (lowercase) names a secret: a component that is one ("db_password",
    "accountkey"), or a phrase ("verification code"). After a bare space, only the names people
    use in sentences. Cached: the same few names come back in every request."""
    parts = _NON_ALNUM.split(head)
    words = b" ".join(parts)
    if any(phrase in words for phrase in _PHRASES):
        return True
    if spoken_only:
        return any(p in _SPOKEN for p in parts)
    return any(p in _EXACT or p.endswith(_SUFFIXES) for p in parts)


def _value_span(text: bytes, start: int) -> tuple[int, int, bool]:
    """The value at `start` and whether it was quoted: a quoted string's content (up to _MAX_QUOTED
    bytes, one line), else everything up to the next whitespace, less trailing quotes."""
    quote = text[start:start + 1]
    if quote in (b'"', b"'"):
        close = text.find(quote, start + 1, start + 1 + _MAX_QUOTED)
        if close > start + 1 and b"\n" not in text[start + 1:close]:
            return start + 1, close, True
    end = _NONSPACE.match(text, start).end()
    while end > start and text[end - 1] in b"\"'":
        end -= 1
    return start, end, False


def _value_to_redact(text: bytes, head: bytes, at: int) -> tuple[int, int] | None:
    """The span of the secret value at `at`, after the name match `head`, or None to keep it.
    After a bare space, only a value with a digit ("hunter2", "7731", not "4 digits") or a symbol
    inside ("p@ss") is taken: "my pin is blocked", "my passcode doesn't work" are requests."""
    strong = _strong(head)
    head = head.lower()
    if not (_named if len(head) <= 64 else _named.__wrapped__)(head, not strong):  # cache short ones
        return None
    start, end, quoted = _value_span(text, at)
    if b"auth" in head and text[start:end].lower() in _SCHEMES:
        # "Authorization: Basic dXNl...": the scheme stays, its credential goes.
        start, end, quoted = _value_span(text, _SPACES.match(text, end).end())
        strong = True
    value = text[start:end]
    if _REDACTED.fullmatch(value):
        return None  # nothing, or already redacted: "password: <secret>"
    if strong or quoted or (len(value) >= 3 and _DIGIT.search(value)) or _INNER_SYMBOL.search(value):
        return start, end
    return None


def _redact_named_values(text: bytes) -> tuple[bytes, bool]:
    """Replace the value after each secret's name; also say whether a quoted value with a space,
    '@' or '/' went (see redact). Matches come from one linear RE2 scan; each value is read once
    (a skipped one at most twice), so the whole pass stays linear."""
    pieces, done, joins = [], 0, False
    for match in _NAMED_VALUE.finditer(text):
        start, end = match.span()
        if end < done:
            continue  # inside a value already replaced
        span = _value_to_redact(text, text[start:end].rstrip(), end)
        if span is not None:
            value_start, value_end = span
            pieces += [text[done:value_start], _SECRET]
            quoted = text[value_start - 1:value_start] in (b'"', b"'")
            joins = joins or (quoted and _JOINS.search(text, value_start, value_end) is not None)
            done = value_end
    return (b"".join(pieces) + text[done:], joins) if pieces else (text, False)


# ---- public functions ---------------------------------------------------------------------------

# A placeholder can join what a space or a digit kept apart: "12345678de06 5894 ..." becomes
# "<num>de06 5894 ...", where an IBAN now starts at a word boundary. So the rules run again on
# their own output until a round could not have made anything new visible; that is what makes
# `redact` idempotent. A named value cannot, unless it was quoted and held a space, '@' or '/':
# an unquoted one ran up to a space, so no space goes and no '@' or '/' is left in its word, and
# '<' ends every run the rules look for.
# Each round that changes something removes text outside placeholders, and a seeded fuzz of
# 40,000 hostile strings never needed more than 3 rounds; the cap keeps the time linear anyway.
_MAX_ROUNDS = 4


def _sub(pattern: "re2._Regexp", replace: Callable[["re2._Match"], bytes], data: bytes) -> bytes:
    """pattern.sub(replace, data), with one span lookup per match (google-re2's own sub spends
    more Python per match, which counts on inputs with a match every few characters)."""
    pieces, done = [], 0
    for match in pattern.finditer(data):
        start, end = match.span()
        pieces += [data[done:start], replace(match)]
        done = end
    return b"".join(pieces) + data[done:] if pieces else data


def _redact_once(data: bytes) -> tuple[bytes, bool]:
    """One round of every rule; also whether another round could find something new. Like an
    unquoted named value, a code before its name is a word between a non-word character and a
    space: replacing it makes nothing new visible either."""
    ruled = data
    for pattern, replace in _RULES:
        ruled = _sub(pattern, replace, ruled)
    named, joins = _redact_named_values(ruled)
    return _sub(_CODE_BEFORE_NAME, _leading_code, named), joins or ruled != data


_SURROGATES = re.compile("[\ud800-\udfff]")
_OTHER_DIGITS = re.compile(r"(?![0-9])\d")  # decimal digits of any script but ASCII
_SPACE = re.compile(r"\s+")


def redact(text: str) -> str:
    """Replace secrets, keys, e-mails, card numbers, IBANs, SSNs, phone numbers and runs of 7+
    digits by placeholders; everything else, casing included, stays as it was."""
    if not text.isascii():  # RE2's \d is ASCII: a card number in full-width digits is still one
        text = _OTHER_DIGITS.sub(lambda digit: str(unicodedata.digit(digit.group())), text)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (a surrogate-escaped line) are no text: U+FFFD
        data = _SURROGATES.sub("\ufffd", text).encode("utf-8")
    for _ in range(_MAX_ROUNDS):
        data, again = _redact_once(data)
        if not again:
            break
    return data.decode("utf-8")


def normalise(text: str) -> str:
    """Unicode NFKC, lowercase, one space between words: what both TF-IDF and the encoders want."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().lower()


def preprocess(text: str) -> str:
    """Normalise, then redact. Normalising first lets the patterns see one canonical form."""
    return redact(normalise(text))
