"""A seeded corpus of fake secrets embedded in everyday sentences, for the redaction tests and bench.

    from secrets_corpus import make_corpus, leaks     # in tests (tests/ is on sys.path)
    python -c "from tests.secrets_corpus import make_corpus; print(len(make_corpus()))"

Every value is generated here (keys of the right shape and length, Luhn-valid card numbers,
IBANs with valid check digits, SSNs with valid area and group numbers, phone numbers in national
and international formats), so a redactor that passes has learned the shapes, not a list. Sentence
templates hold no digits of their own: any digit run left in an output comes from a secret.
`leaks(secret, output)` lists what survived: the whole secret, or any 6-character window of one of
its distinctive parts (digits only for numbers, whose separators a redactor may change).
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
from dataclasses import dataclass
from typing import Callable

SEED = 20261201
WINDOW = 6
B64 = string.ascii_letters + string.digits + "+/"
B64URL = string.ascii_letters + string.digits + "-_"
ALNUM = string.ascii_letters + string.digits
UPPER_ALNUM = string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class Secret:
    kind: str
    text: str  # the sentence as a user would paste it
    secret: str  # the secret exactly as it appears in `text`
    parts: tuple[str, ...]  # distinctive parts: no WINDOW-character piece of one may survive
    numeric: bool = False  # parts are compared on digits only


def _pick(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _b64_with_symbols(rng: random.Random, n: int) -> str:
    """n base64 characters with at least one '+' and one '/' inside (AWS secret keys, PEM lines)."""
    chars = list(_pick(rng, B64, n))
    for symbol in "+/":
        chars[rng.randrange(1, n - 1)] = symbol
    return "".join(chars)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _luhn_complete(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:  # these are doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return digits + str((10 - total % 10) % 10)


def _iban(country: str, bban: str) -> str:
    """An IBAN with valid check digits (ISO 13616 mod-97)."""
    moved = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    return f"{country}{98 - int(moved) % 97:02d}{bban}"


# ---- value generators: each returns (secret as written, distinctive parts, numeric) -------------

def _aws_key_id(rng):
    key = rng.choice(["AKIA", "ASIA"]) + _pick(rng, string.ascii_uppercase + "234567", 16)
    return key, (key[4:],), False


def _aws_secret(rng):
    key = _b64_with_symbols(rng, 40)
    return key, (key,), False


def _basic_auth(rng):
    user = rng.choice(["svc", "deploy", "admin", "ci", "grafana"]) + _pick(rng, string.ascii_lowercase, 3)
    token = base64.b64encode(f"{user}:{_password(rng)[0]}".encode()).decode()
    return token, (token,), False


def _bearer_dotted(rng):
    token = ".".join(_pick(rng, B64URL, rng.randint(8, 24)) for _ in range(3))
    return token, tuple(token.split(".")), False


def _jwt(rng):
    header = {"alg": rng.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"}
    payload = {"sub": _pick(rng, string.digits, 8), "name": rng.choice(["Ana", "Bo", "Cy"]),
               "iat": rng.randint(10**9, 2 * 10**9)}
    token = ".".join([_b64url(json.dumps(header).encode()), _b64url(json.dumps(payload).encode()),
                      _b64url(rng.randbytes(32))])
    return token, (token.split(".")[1], token.split(".")[2]), False


def _openai(rng):
    key = rng.choice(["sk-", "sk-proj-"]) + _pick(rng, ALNUM + "-_", rng.choice([32, 48, 64]))
    return key, (key.split("-", 2)[-1],), False


def _anthropic(rng):
    body = _pick(rng, ALNUM + "-_", 93) + "AA"
    return "sk-ant-api03-" + body, (body,), False


def _github(rng):
    if rng.random() < 0.3:
        body = _pick(rng, ALNUM, 22) + "_" + _pick(rng, ALNUM, 59)
        return "github_pat_" + body, (body,), False
    body = _pick(rng, ALNUM, 36)
    return rng.choice(["ghp_", "gho_", "ghs_", "ghu_"]) + body, (body,), False


def _slack(rng):
    if rng.random() < 0.4:
        path = f"T{_pick(rng, UPPER_ALNUM, 9)}/B{_pick(rng, UPPER_ALNUM, 10)}/{_pick(rng, ALNUM, 24)}"
        return "https://hooks.slack.com/services/" + path, tuple(path.split("/")), False
    body = f"{_pick(rng, string.digits, 12)}-{_pick(rng, string.digits, 13)}-{_pick(rng, ALNUM, 24)}"
    return rng.choice(["xoxb-", "xoxp-", "xoxa-"]) + body, (body,), False


def _stripe(rng):
    body = _pick(rng, ALNUM, rng.choice([24, 32, 99]))
    return rng.choice(["sk_live_", "rk_live_", "sk_test_", "whsec_"]) + body, (body,), False


def _google(rng):
    body = _pick(rng, ALNUM + "-_", 35)
    return "AIza" + body, (body,), False


def _other_provider(rng):
    prefix, alphabet, n = rng.choice([("glpat-", ALNUM + "-_", 20), ("npm_", ALNUM, 36), ("hf_", string.ascii_letters, 34),
                                      ("shpat_", "0123456789abcdef", 32), ("dop_v1_", "0123456789abcdef", 64),
                                      ("key-", "0123456789abcdef", 32), ("SK", "0123456789abcdef", 32)])
    body = _pick(rng, alphabet, n)
    return prefix + body, (body,), False


def _sendgrid(rng):
    a, b = _pick(rng, B64URL, 22), _pick(rng, B64URL, 43)
    return f"SG.{a}.{b}", (a, b), False


def _pem(rng):
    kind = rng.choice(["RSA PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY", "PRIVATE KEY", "ENCRYPTED PRIVATE KEY"])
    lines = [_b64_with_symbols(rng, 64) for _ in range(rng.randint(3, 7))]
    lines.append(_b64_with_symbols(rng, rng.randint(8, 40)) + rng.choice(["", "=", "=="]))
    block = "\n".join([f"-----BEGIN {kind}-----", *lines] + ([] if rng.random() < 0.2 else [f"-----END {kind}-----"]))
    return block, tuple(lines), False


_WORDS = ["maple", "orbit", "tango", "falcon", "cobalt", "quartz", "pepper", "harbor", "lumen", "zephyr", "gravel", "nimbus"]


def _password(rng):
    style = rng.randrange(4)
    if style == 0:
        value = rng.choice(_WORDS).capitalize() + rng.choice("!#$%&*?") + rng.choice(_WORDS) + _pick(rng, string.digits, 2)
    elif style == 1:
        value = rng.choice(_WORDS).translate(str.maketrans("aeio", "4310")) + _pick(rng, string.digits, 3)
    elif style == 2:
        value = _pick(rng, ALNUM + "!#$%&*?^~", rng.randint(10, 18)) + rng.choice(string.digits)
    else:
        value = rng.choice(_WORDS) + _pick(rng, string.digits, rng.randint(1, 4))
    return value, (value,), False


_PHRASE_WORDS = ["velvet", "crumpet", "walrus", "mangrove", "sprocket", "thimble", "juniper", "saffron"]


def _passphrase(rng):
    value = " ".join(rng.sample(_PHRASE_WORDS, 4))
    return value, (value,), False


def _pin(rng):
    value = _pick(rng, string.digits, rng.choice([3, 4, 6, 8]))
    return value, (value,), True


def _card(rng):
    prefix, length, groups = rng.choice([("4", 16, (4, 4, 4, 4)), ("5" + str(rng.randint(1, 5)), 16, (4, 4, 4, 4)),
                                         ("2" + str(rng.randint(221, 720)), 16, (4, 4, 4, 4)),
                                         ("3" + rng.choice("47"), 15, (4, 6, 5)), ("6011", 16, (4, 4, 4, 4))])
    digits = _luhn_complete(prefix + _pick(rng, string.digits, length - len(prefix) - 1))
    sep = rng.choice([" ", "-", ""])
    chunks, at = [], 0
    for size in groups:
        chunks.append(digits[at:at + size])
        at += size
    return sep.join(chunks), (digits,), True


_IBAN_BBAN: dict[str, Callable[[random.Random], str]] = {
    "DE": lambda r: _pick(r, string.digits, 18),
    "GB": lambda r: _pick(r, string.ascii_uppercase, 4) + _pick(r, string.digits, 14),
    "FR": lambda r: _pick(r, string.digits, 10) + _pick(r, UPPER_ALNUM, 11) + _pick(r, string.digits, 2),
    "NL": lambda r: _pick(r, string.ascii_uppercase, 4) + _pick(r, string.digits, 10),
    "ES": lambda r: _pick(r, string.digits, 20),
    "IT": lambda r: r.choice(string.ascii_uppercase) + _pick(r, string.digits, 10) + _pick(r, UPPER_ALNUM, 12),
    "CH": lambda r: _pick(r, string.digits, 5) + _pick(r, UPPER_ALNUM, 12),
    "BE": lambda r: _pick(r, string.digits, 12),
    "PL": lambda r: _pick(r, string.digits, 24),
}


def _iban_value(rng):
    country = rng.choice(sorted(_IBAN_BBAN))
    iban = _iban(country, _IBAN_BBAN[country](rng))
    written = " ".join(iban[i:i + 4] for i in range(0, len(iban), 4)) if rng.random() < 0.6 else iban
    return written, (iban[4:],), False


def _ssn(rng):
    area = rng.choice([a for a in range(1, 900) if a != 666])
    digits = f"{area:03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"
    sep = rng.choice(["-", "-", " "])
    return sep.join([digits[:3], digits[3:5], digits[5:]]), (digits,), True


def _nanp(rng) -> tuple[str, str, str]:
    return str(rng.randint(201, 989)), str(rng.randint(200, 999)), _pick(rng, string.digits, 4)


def _phone(rng):
    a, b, c = _nanp(rng)
    d = _pick(rng, string.digits, 8)
    written, national = rng.choice([
        (f"+1 {a} {b} {c}", a + b + c), (f"({a}) {b}-{c}", a + b + c), (f"{a}-{b}-{c}", a + b + c),
        (f"{a}.{b}.{c}", a + b + c), (f"+1-{a}-{b}-{c}", a + b + c), (f"1-800-{b}-{c}", b + c),
        (f"+1 ({a}) {b}-{c}", a + b + c), (f"+44 20 {d[:4]} {d[4:]}", "20" + d), (f"020 {d[:4]} {d[4:]}", "20" + d),
        (f"+44 7700 {d[:6]}", "7700" + d[:6]), (f"07700 {d[:6]}", "7700" + d[:6]), (f"+49 30 {d}", "30" + d),
        (f"+33 1 {d[:2]} {d[2:4]} {d[4:6]} {d[6:]}", "1" + d), (f"+91 9{d[:4]} {d[4:]}{c[:1]}", "9" + d + c[:1]),
        (f"+61 4{d[:2]} {d[2:5]} {d[5:]}", "4" + d), (f"+86 138 {d[:4]} {d[4:]}", "138" + d),
        (f"{b}-{c}", b + c),
    ])
    return written, (national,), True


def _email(rng):
    local = rng.choice(["jana", "li.wei", "o.brien", "marta+billing", "sam_k", "josé.ortiz"]) + _pick(rng, string.digits, 2)
    domain = rng.choice(["example.com", "mail.example.org", "corp.example.co.uk", "example.net"])
    return f"{local}@{domain}", (local,), False


def _url_credentials(rng):
    scheme, host = rng.choice([("postgres", "db.internal:5432/app"), ("https", "git.example.com/team/repo.git"),
                               ("redis", "cache.example.net:6379/0"), ("mongodb+srv", "cluster0.example.net/prod"),
                               ("amqp", "mq.example.org:5672/vhost"), ("ftp", "files.example.com/upload")])
    user, password = rng.choice(["admin", "svc_app", "deploy"]), _password(rng)[0].replace("@", "!")
    return f"{scheme}://{user}:{password}@{host}", (password,), False


def _hex_token(rng):
    value = _pick(rng, "0123456789abcdef", rng.choice([32, 40, 64]))
    value = value.upper() if rng.random() < 0.2 else value
    return value, (value,), False


def _base64_token(rng):
    value = _pick(rng, B64, rng.randint(24, 64)) + rng.choice(["", "=", "=="])
    return value, (value,), False


def _azure(rng):
    key = _b64_with_symbols(rng, 86) + "=="
    account = "store" + _pick(rng, string.ascii_lowercase, 5)
    conn = f"DefaultEndpointsProtocol=https;AccountName={account};AccountKey={key};EndpointSuffix=core.windows.net"
    return conn, (key,), False


# ---- sentences: (generator, templates); '{s}' is the secret ----------------------------------

KINDS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "aws_key_id": (_aws_key_id, ("my access key id is {s}, why is it denied", "aws_access_key_id={s}",
                                 "can you check if {s} still has bucket access")),
    "aws_secret": (_aws_secret, ("the secret that goes with it is {s} please keep it safe", "here you go {s}",
                                 "rotated it, new one: {s}")),
    "aws_secret_assign": (_aws_secret, ("aws_secret_access_key = {s}", "export AWS_SECRET_ACCESS_KEY={s}",
                                        '{{"SecretAccessKey": "{s}"}} is in my config', "secret_access_key: {s}")),
    "basic_auth": (_basic_auth, ("Authorization: Basic {s}", 'curl -H "Authorization: Basic {s}" fails',
                                 "the header is authorization: basic {s} and it still gets refused")),
    "bearer": (_bearer_dotted, ("Authorization: Bearer {s}", "i send bearer {s} and get unauthorized",
                                "header Authorization: Bearer {s} returns forbidden")),
    "jwt": (_jwt, ("my session token {s} expired", "why does {s} fail validation", "decode this for me: {s}")),
    "openai": (_openai, ("my openai key {s} stopped working", "OPENAI_API_KEY={s}", "is {s} a project key")),
    "anthropic": (_anthropic, ("my claude key is {s}", "ANTHROPIC_API_KEY={s} in the env file", "rate limited on {s}")),
    "github": (_github, ("git push asks for a token, i used {s}", "GITHUB_TOKEN={s}", "revoke {s} please")),
    "slack": (_slack, ("the bot token {s} was leaked", "post to {s} when the build breaks", "SLACK_TOKEN={s}")),
    "stripe": (_stripe, ("charge failed with key {s}", "STRIPE_SECRET_KEY={s}", "is {s} the live one")),
    "google": (_google, ("maps says my key {s} is invalid", "GOOGLE_API_KEY={s}", "restrict {s} to our domain")),
    "other_provider": (_other_provider, ("the deploy token is {s}", "use {s} to publish", "HF_TOKEN={s}")),
    "sendgrid": (_sendgrid, ("mail stopped, key {s}", "SENDGRID_API_KEY={s}")),
    "pem": (_pem, ("ssh rejects this key:\n{s}\nwhat is wrong", "{s}", "pasting my deploy key {s} into the form")),
    "password": (_password, ("my password is {s}", "password: {s}", "password - {s}", "pwd={s}",
                             "Passcode {s} does not work", "login with user bob and password {s}", "new password -> {s}", "PASSWORD='{s}'",
                             'the db password="{s}" is rejected', "my wifi password is {s} can you connect")),
    "passphrase": (_passphrase, ('my passphrase is "{s}"', "passphrase: '{s}'", 'set the wifi password to "{s}"')),
    "pin_otp": (_pin, ("my pin is {s}", "pin code {s}", "the otp is {s}", "verification code: {s}", "cvv {s}",
                       "security code {s} on the back")),
    "card": (_card, ("charge my card {s} please", "card number {s}", "the visa {s} got declined", "{s} is my card")),
    "iban": (_iban_value, ("send the refund to {s}", "my iban is {s}", "IBAN: {s} for the rent", "wire it to {s} today")),
    "ssn": (_ssn, ("my ssn is {s}", "social security number {s}", "{s} is my social", "ssn: {s} for the form")),
    "phone": (_phone, ("call me at {s} after work", "my cell is {s}", "text {s} when you land", "reach the office on {s}",
                       "my number is {s}", "phone: {s}")),
    "email": (_email, ("mail me at {s}", "send the invoice to {s} tomorrow", "is {s} on the list", "contact: {s}")),
    "url_credentials": (_url_credentials, ("connect to {s}", "clone {s} fails", "the broker url is {s}")),
    "hex_token": (_hex_token, ("the session id is {s}", "api token {s} expired", "use {s} as the webhook secret")),
    "base64_token": (_base64_token, ("refresh token {s} is invalid", "cookie session={s}", "paste {s} into the box")),
    "azure": (_azure, ("storage fails with {s}", "my connection string is {s}")),
}

_OPENERS = ["", "", "hi, ", "quick question: ", "please help, ", "urgent: ", "Hey team - "]
_CLOSERS = ["", "", " thanks", " asap", ". what now?", " !!"]


def make_corpus(seed: int = SEED, per_kind: int = 14) -> list[Secret]:
    """`per_kind` secrets of every kind in KINDS, each in a sentence; the same list for the same seed."""
    rng = random.Random(seed)
    corpus = []
    for kind, (generate, templates) in KINDS.items():
        for i in range(per_kind):
            secret, parts, numeric = generate(rng)
            sentence = templates[i % len(templates)].format(s=secret)
            corpus.append(Secret(kind, rng.choice(_OPENERS) + sentence + rng.choice(_CLOSERS), secret, parts, numeric))
    return corpus


_JOINED_DIGITS = re.compile(r"(?<=\d)[\s().+/-]+(?=\d)")


def leaks(secret: Secret, output: str) -> list[str]:
    """What of `secret` survives in `output`: the secret itself, or WINDOW-long pieces of its parts."""
    out = output.lower()
    found = [secret.secret] if secret.secret.lower() in out else []
    if secret.numeric:
        out = _JOINED_DIGITS.sub("", out)
    for part in secret.parts:
        part = re.sub(r"\D", "", part) if secret.numeric else part.lower()
        if len(part) < WINDOW:
            found += [part] if part in out else []
            continue
        found += [part[i:i + WINDOW] for i in range(len(part) - WINDOW + 1) if part[i:i + WINDOW] in out]
    return found


def json_strings(value) -> list[str]:
    """Every string in a JSON document except hashes (cache keys, prompt hashes), which are hex: a
    short secret (a PIN) could appear in one by chance."""
    if isinstance(value, dict):
        return [s for key, item in value.items() if key not in ("key", "prompt_hash") for s in json_strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in json_strings(item)]
    return [value] if isinstance(value, str) else []
