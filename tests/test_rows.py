import json

from routelet.data.rows import read_rows, write_quarantine

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
    assert reasons[4] == "unknown label 'philosophy': not in the taxonomy"
    assert reasons[5].startswith("invalid UTF-8")
    assert reasons[6].startswith("text: Field required")
    assert "over the limit of 40" in reasons[7]
    assert reasons[8] == "expected a JSON object, got list"
    assert reasons[10].startswith("colour:")
    assert reasons[11] == "label: missing"
    assert str(rejected[0]) == f"{path}:2: {reasons[2]}"


def test_quarantine_keeps_every_rejected_line_redacted(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "my password is hunter2", "label": "nope"}\n')
    _, rejected = read_rows(path, known_labels={"balance"})
    write_quarantine(tmp_path / "q" / "quarantine.jsonl", rejected)
    [record] = [json.loads(line) for line in (tmp_path / "q" / "quarantine.jsonl").read_text().splitlines()]
    assert record["file"] == str(path) and record["line"] == 1 and "unknown label" in record["reason"]
    assert "hunter2" not in record["raw"] and "<secret>" in record["raw"]
