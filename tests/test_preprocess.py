import pytest

from routelet.serving.preprocess import preprocess, redact

# Secrets in the shapes users paste: none of the secret part may survive the preprocess.
SECRET_CORPUS = [
    ("my password is hunter2", "hunter2"),
    ("Password: Tr0ub4dor&3", "tr0ub4dor&3"),
    ("pwd=correct-horse-battery-staple", "correct-horse"),
    ("here is my api key: sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv", "abcdefghij"),
    ("api_key=ZXhhbXBsZWtleQ", "zxhhbxbsz"),
    ("OPENAI sk-proj-9f8e7d6c5b4a39281706f5e4d3c2b1a0 please", "9f8e7d6c5b4a"),
    ("aws AKIAIOSFODNN7EXAMPLE and more", "akiaiosfodnn7example"),
    ("token ghp_1234567890abcdefghijABCDEFGHIJ123456", "1234567890abcdef"),
    ("slack xoxb-123456789012-abcdefghijkl", "abcdefghijkl"),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "4ec39hqlyjwdar"),
    ("google AIzaSyA1234567890abcdefghijklmnopqrstu", "aizasya1234567"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "dozjgnry"),
    ("mail me at Jane.Doe+work@example.co.uk", "jane.doe"),
    ("card 4111 1111 1111 1111 exp 12/29", "4111"),
    ("card number 5500-0000-0000-0004", "5500"),
    ("my account is 12345678", "12345678"),
    ("call me on 0151 496 0000", "0000"),
    ("the bearer token is abc123xyz789", "abc123xyz789"),
    ("connect to postgres://admin:s3cr3t@db.internal:5432/prod", "s3cr3t"),
    ("https://user:pa55word@example.com/path", "pa55word"),
    ("pin code 7731", "7731"),
    ("secret = 'q9!vZ#x'", "q9!vz#x"),
    ("client_secret: 9a8b7c6d5e4f3a2b1c0d", "9a8b7c6d5e4f"),
    ("opaque key a1b2c3d4e5f6g7h8i9j0k1l2m3n4", "a1b2c3d4e5f6"),
]


@pytest.mark.parametrize("text,secret", SECRET_CORPUS)
def test_no_secret_survives(text, secret):
    assert secret not in preprocess(text)
    assert secret not in redact(text).lower()


@pytest.mark.parametrize("text,_", SECRET_CORPUS)
def test_preprocess_is_idempotent(text, _):
    once = preprocess(text)
    assert preprocess(once) == once


@pytest.mark.parametrize(
    "text",
    ["my pin is blocked", "i forgot my password.", "how do i reset my api key", "what's the token for the subway"],
)
def test_ordinary_requests_about_secrets_are_kept(text):
    assert preprocess(text) == text


def test_normalises_unicode_case_and_spaces():
    assert preprocess("  Book\u00a0a   FLIGHT\tto ｐａｒｉｓ ") == "book a flight to paris"


def test_placeholders_name_what_was_removed():
    assert preprocess("email bob@example.com card 4111111111111111 code 123456") == \
        "email <email> card <card> code <num>"
