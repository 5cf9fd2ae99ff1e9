import codecs
import json
import time

import pytest

from routelet.data.rows import RAW_KEPT, DataError, read_rows, write_quarantine

LINES = [
    b'{"text": "check my balance", "label": "balance"}',
    b'{"text": "book a flight", "label": "flight"',  # malformed JSON
    b'{"text": "   ", "label": "balance"}',  # empty text
    b'{"text": "what is love", "label": "philosophy"}',  # unknown label
    b'{"text": "caf\xe9", "label": "balance"}',  # Latin-1, not UTF-8
    b'{"label": "balance"}',  # no text
    b'{"text": "' + b"x" * 50 + b'", "label": "balance"}',  # too long
    b'["a", "list"]',
    b'{"text": "ok", "label": "balance", "id": 7, "meta": {"source": "app"}}',
    b'{"text": "extra field", "label": "balance", "colour": "red"}',
    b'{"text": "no label"}',
]


def write_lines(path, lines):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def reasons_of(path, **kwargs):
    rows, rejected = read_rows(path, **kwargs)
    return rows, {r.line: r.reason for r in rejected}


def test_every_bad_line_is_rejected_with_its_line_and_reason(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(LINES) + b"\n\n")
    rows, rejected = read_rows(path, known_labels={"balance", "flight"}, max_chars=40)
    assert [r.line for r in rows] == [1, 9]
    assert rows[1].row.meta == {"source": "app"} and rows[1].where == f"{path}:9"
    reasons = {r.line: r.reason for r in rejected}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8, 10, 11]
    assert reasons[2].startswith("malformed JSON")
    assert reasons[3] == "text: text is empty"
    assert reasons[4] == "unknown label 'philosophy': not in the taxonomy (add it there or fix the row)"
    assert reasons[5].startswith("invalid UTF-8 at byte 14 (Latin-1") and "re-save the file as UTF-8" in reasons[5]
    assert reasons[6].startswith("text: Field required")
    assert "over the limit of 40" in reasons[7]
    assert reasons[8] == "expected a JSON object, got list"
    assert reasons[10].startswith("colour:")
    assert reasons[11] == "label: missing"
    assert str(rejected[0]) == f"{path}:2: {reasons[2]}"


@pytest.mark.parametrize("escape, code", [
    ("\\u0000", "U+0000"), ("\\u0007", "U+0007"), ("\\u001b", "U+001B"), ("\\u000b", "U+000B"), ("\\u001f", "U+001F"),
])
def test_control_characters_in_a_text_are_rejected_with_the_character(tmp_path, escape, code):
    path = write_lines(tmp_path / "t.jsonl", [f'{{"text": "play{escape} jazz", "label": "music"}}'.encode()])
    rows, reasons = reasons_of(path)
    assert rows == []
    assert reasons[1] == (f"text: control character {code} at character 5 of the text: remove it "
                          "(only tab, newline and carriage return are allowed)")


def test_tab_newline_and_carriage_return_are_kept(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [b'{"text": "play\\tjazz\\r\\nnow", "label": "music"}'])
    rows, reasons = reasons_of(path)
    assert reasons == {} and rows[0].row.text == "play\tjazz\r\nnow"


def test_a_label_with_a_control_character_or_a_lone_surrogate_is_rejected(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [
        b'{"text": "play jazz", "label": "mu\\u0000sic"}',
        b'{"text": "caf\\ud800e", "label": "food"}',  # would crash the UTF-8 writer downstream
        b'{"text": "fine", "label": " "}',
    ])
    rows, reasons = reasons_of(path)
    assert rows == []
    assert reasons[1].startswith("label: control character U+0000 at character 3 of the label")
    assert reasons[2].startswith("text: lone surrogate U+D800 at character 4 of the text: not valid Unicode")
    assert reasons[3] == "label: label is empty"


@pytest.mark.parametrize("codec, name", [
    ("utf-16", "UTF-16LE"),  # Python writes a BOM, little-endian here
    ("utf-16-be", "UTF-16BE"),  # no BOM: found by the NUL pattern
    ("utf-16-le", "UTF-16LE"),
    ("utf-32", "UTF-32LE"),
])
def test_a_file_not_in_utf8_is_one_error_naming_its_encoding(tmp_path, codec, name):
    lines = "".join(json.dumps({"text": f"request {i}", "label": "a"}) + "\n" for i in range(61))
    path = tmp_path / "train.jsonl"
    path.write_bytes(lines.encode(codec))
    with pytest.raises(DataError) as error:
        read_rows(path)
    message = str(error.value)
    assert message.startswith(f"{path}: the file is {name}, not UTF-8: convert it, e.g. iconv -f {name} -t UTF-8")
    assert "\n" not in message


def test_a_utf8_bom_at_file_start_is_accepted_and_elsewhere_named(tmp_path):
    row = b'{"text": "hello there", "label": "greeting"}'
    path = write_lines(tmp_path / "t.jsonl", [codecs.BOM_UTF8 + row, codecs.BOM_UTF8 + row, row])
    rows, reasons = reasons_of(path)
    assert [r.line for r in rows] == [1, 3]
    assert reasons == {2: "a byte-order mark starts this line (files joined with cat?): remove it"}


def test_crlf_line_endings_are_accepted(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"text": "a b", "label": "x"}\r\n{"text": "c d", "label": "y"}\r\n')
    rows, reasons = reasons_of(path)
    assert reasons == {} and [r.row.text for r in rows] == ["a b", "c d"]


def test_duplicate_keys_constants_and_deep_nesting_are_named(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [
        b'{"text": "first", "label": "a", "text": "second"}',
        b'{"text": "fine", "label": "a", "meta": {"k": 1, "k": 2}}',
        b'{"text": "fine", "label": "a", "meta": {"score": NaN}}',
        b'{"text": "fine", "label": "a", "meta": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ])
    rows, reasons = reasons_of(path)
    assert rows == []
    assert reasons[1] == "duplicate key 'text': name each field once"
    assert reasons[2] == "duplicate key 'k': name each field once"
    assert reasons[3].startswith("NaN is not JSON")
    assert reasons[4] == "malformed JSON: nested too deeply"


def test_values_quoted_in_a_reason_are_redacted(tmp_path):
    card = "4111 1111 1111 1111"
    path = write_lines(tmp_path / "t.jsonl", [
        json.dumps({"text": "hi", "label": f"card {card}"}).encode(),
        json.dumps({"text": "hi", "label": "a", f"key {card}": 1}).encode(),
    ])
    _, rejected = read_rows(path, known_labels={"a"})
    assert len(rejected) == 2
    assert all("1111" not in r.reason and "<card>" in r.reason for r in rejected)


def test_a_file_that_cannot_be_read_is_one_error(tmp_path):
    with pytest.raises(DataError, match=f"^{tmp_path}: cannot read it"):
        read_rows(tmp_path)  # a folder


def test_quarantine_keeps_every_rejected_line_redacted(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "my password is hunter2", "label": "nope"}\n')
    _, rejected = read_rows(path, known_labels={"balance"})
    write_quarantine(tmp_path / "q" / "quarantine.jsonl", rejected)
    [record] = [json.loads(line) for line in (tmp_path / "q" / "quarantine.jsonl").read_text().splitlines()]
    assert record["file"] == str(path) and record["line"] == 1 and "unknown label" in record["reason"]
    assert "hunter2" not in record["raw"] and "<secret>" in record["raw"]
    assert "raw_cut_from_chars" not in record


def test_quarantine_of_a_huge_line_is_bounded_and_says_so(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"text": "1-" * 500_000, "label": "a"}) + "\n")
    _, rejected = read_rows(path, max_chars=2000)
    write_quarantine(tmp_path / "quarantine.jsonl", rejected)
    [record] = [json.loads(line) for line in (tmp_path / "quarantine.jsonl").read_text().splitlines()]
    assert "over the limit of 2000" in record["reason"]
    assert len(record["raw"]) <= RAW_KEPT and record["raw_cut_from_chars"] == len(path.read_text()) - 1


def test_the_quarantine_cut_never_halves_a_secret(tmp_path):
    key = "AKIAIOSFODNN7EXAMPLE"
    path = tmp_path / "in.jsonl"
    line = json.dumps({"text": "x " * 990 + f"key {key} and more", "label": "a"})
    assert line.index(key) < RAW_KEPT < line.index(key) + len(key)  # the key straddles the cut
    path.write_text(line + "\n")
    _, rejected = read_rows(path, max_chars=100)
    write_quarantine(tmp_path / "quarantine.jsonl", rejected)
    record = json.loads((tmp_path / "quarantine.jsonl").read_text())
    assert "AKIA" not in record["raw"] and record["raw"].endswith("key")


def test_huge_adversarial_values_in_reasons_are_bounded_before_redaction(tmp_path):
    # "1-1-1-..." is slow for regex redaction; a megabyte of it in a label or a key must not stall checkdata.
    path = write_lines(tmp_path / "t.jsonl", [
        json.dumps({"text": "hi", "label": "1-" * 500_000}).encode(),
        json.dumps({"text": "hi", "label": "a", "1-" * 500_000: 1}).encode(),
    ])
    started = time.perf_counter()
    _, rejected = read_rows(path, known_labels={"a"})
    write_quarantine(tmp_path / "quarantine.jsonl", rejected)
    assert time.perf_counter() - started < 10  # generous: the quarantine bounds the line before redacting it
    assert [len(r.reason) < 200 for r in rejected] == [True, True]
