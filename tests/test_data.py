"""Tests for gradproj.data: formats, the two record shapes, ids, validation errors, writing."""

from __future__ import annotations

import csv
import json
import os

import pytest

from gradproj.core import data
from gradproj.core.data import (
    FieldMap,
    PreferencePair,
    content_id,
    load_pairs,
    pairs_from_records,
    write_pairs_jsonl,
)
from gradproj.core.errors import GradprojError, InputError

RECORDS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon"},
    {"prompt": "Say hello in Greek", "chosen": "Γειά σου", "rejected": "Hello"},
]
CHAT_RECORDS = [
    {"chosen": [{"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["chosen"]}],
     "rejected": [{"role": "user", "content": r["prompt"]},
                  {"role": "assistant", "content": r["rejected"]}]}
    for r in RECORDS
]
UNSUPPORTED = ("unsupported file type '.txt' (supported: .jsonl, .jsonl.gz, .json, .csv, .parquet, "
               "or a directory written by datasets' save_to_disk)")


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def write_jsonl(path, lines):
    """Write records (dicts) or raw strings, one per line."""
    text = "".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n"
                   for x in lines)
    path.write_text(text, encoding="utf-8")
    return path


def write_csv(path, records):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return path


def write_parquet(path, records):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def canonical(pairs):
    return [(p.id, p.prompt, p.chosen, p.rejected) for p in pairs]


def error_of(source, **kwargs):
    with pytest.raises(InputError) as info:
        load_pairs(source, **kwargs)
    return str(info.value)


def jsonl_error(tmp_path, lines, **kwargs):
    path = write_jsonl(tmp_path / "pairs.jsonl", lines)
    return path, error_of(path, **kwargs)


# --- formats ------------------------------------------------------------------------------------

@pytest.fixture
def expected():
    return canonical(pairs_from_records(RECORDS))


def test_expected_pairs_are_canonical(expected):
    first = expected[0]
    assert first == (content_id((user("What is 2+2?"),), (assistant("4"),), (assistant("5"),)),
                     (user("What is 2+2?"),), (assistant("4"),), (assistant("5"),))
    assert len({pair_id for pair_id, *_ in expected}) == 3


def test_jsonl(tmp_path, expected):
    path = write_jsonl(tmp_path / "p.jsonl", [RECORDS[0], "", "   ", RECORDS[1], RECORDS[2]])
    pairs = load_pairs(path)
    assert canonical(pairs) == expected
    assert [p.source for p in pairs] == [f"{path}:1", f"{path}:4", f"{path}:5"]
    assert [p.record for p in pairs] == RECORDS


def test_jsonl_with_bom_and_crlf(tmp_path, expected):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"".join(
        json.dumps(r).encode() + b"\r\n" for r in RECORDS))
    assert canonical(load_pairs(path)) == expected


@pytest.mark.parametrize("wrap", [lambda rs: rs, lambda rs: {"data": rs},
                                  lambda rs: {"version": "1", "rows": rs}])
def test_json(tmp_path, expected, wrap):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(wrap(RECORDS), ensure_ascii=False), encoding="utf-8")
    pairs = load_pairs(path)
    assert canonical(pairs) == expected
    assert [p.source for p in pairs] == [f"{path}:1", f"{path}:2", f"{path}:3"]


def test_csv_rows_count_data_rows_only(tmp_path, expected):
    path = write_csv(tmp_path / "p.csv", RECORDS)
    pairs = load_pairs(path)
    assert canonical(pairs) == expected
    assert [p.source for p in pairs] == [f"{path}:1", f"{path}:2", f"{path}:3"]


def test_parquet(tmp_path, expected):
    path = write_parquet(tmp_path / "p.parquet", RECORDS)
    assert canonical(load_pairs(path)) == expected
    assert load_pairs(path)[2].source == f"{path}:3"


def test_parquet_chat_records(tmp_path, expected):
    path = write_parquet(tmp_path / "chat.parquet", CHAT_RECORDS)
    assert canonical(load_pairs(path)) == expected


def test_saved_dataset(tmp_path, expected):
    import datasets

    path = tmp_path / "ds"
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(path))
    pairs = load_pairs(path)
    assert canonical(pairs) == expected
    assert pairs[1].source == f"{path}:2"


def test_saved_dataset_dict_picks_split(tmp_path, expected):
    import datasets

    path = tmp_path / "dd"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"prompt": "x", "chosen": "y", "rejected": "z"}]),
        "test": datasets.Dataset.from_list(CHAT_RECORDS),
    }).save_to_disk(str(path))
    assert canonical(load_pairs(path, split="test")) == expected
    assert len(load_pairs(path)) == 1
    assert error_of(path, split="validation") == \
        f"{path}: no split 'validation' (available: train, test)"


def test_hub_id_without_network(tmp_path, monkeypatch):
    import datasets

    def offline(name, split):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    assert error_of("owner/name") == (
        "cannot load dataset 'owner/name': not a local file and the hub is unreachable "
        "(Couldn't reach 'owner/name' on the Hub (LocalEntryNotFoundError))")


def test_hub_id_loads_split(tmp_path, monkeypatch, expected):
    import datasets

    calls = []

    def fake(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(CHAT_RECORDS)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    pairs = load_pairs("owner/name", split="test_prefs")
    assert calls == [("owner/name", "test_prefs")]
    assert canonical(pairs) == expected
    assert pairs[0].source == "owner/name:1"


def test_missing_paths_are_not_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert error_of("owner/name.jsonl") == "owner/name.jsonl: no such file"
    assert error_of(tmp_path / "nope") == f"{tmp_path / 'nope'}: no such file"
    assert error_of("a/b/c") == "a/b/c: no such file"


def test_unknown_extension(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("x")
    assert error_of(path) == f"{path}: {UNSUPPORTED}"


# --- shapes -------------------------------------------------------------------------------------

def test_field_remapping(tmp_path):
    fields = FieldMap.parse(["chosen=better", "rejected=worse", "prompt=question"])
    assert fields == FieldMap(prompt="question", chosen="better", rejected="worse", id="id")
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "P", "better": "C", "worse": "R"}])
    [pair] = load_pairs(path, fields)
    assert (pair.prompt_text, pair.chosen_text, pair.rejected_text) == ("P", "C", "R")
    assert error_of(path) == f"{path}:1: field 'chosen' is missing"


@pytest.mark.parametrize("spec, message", [
    ("chosen", "bad field mapping 'chosen': expected NAME=COLUMN, e.g. chosen=better"),
    ("chosen=", "bad field mapping 'chosen=': expected NAME=COLUMN, e.g. chosen=better"),
    ("answer=x", "bad field mapping 'answer=x': unknown field 'answer' "
                 "(expected one of prompt, chosen, rejected, id)"),
])
def test_field_map_parse_errors(spec, message):
    with pytest.raises(GradprojError) as info:
        FieldMap.parse([spec])
    assert str(info.value) == message


def test_flat_and_chat_records_are_equivalent():
    [flat] = pairs_from_records([RECORDS[0]])
    [chat] = pairs_from_records([CHAT_RECORDS[1]])
    [flat1] = pairs_from_records([RECORDS[1]])
    assert canonical([chat]) == canonical([flat1])
    assert flat.prompt == (user("What is 2+2?"),)
    assert (flat.conversational, chat.conversational) == (False, True)
    assert flat.trl_row() == RECORDS[0]
    assert chat.trl_row() == {"prompt": [user("Capital of France?")],
                              "chosen": [assistant("Paris")], "rejected": [assistant("Lyon")]}


def test_one_dataset_holds_one_form():
    with pytest.raises(InputError) as err:
        pairs_from_records([RECORDS[0], CHAT_RECORDS[1]])
    assert str(err.value) == ("<records>:2: field 'chosen' is conversational (message lists) "
                              "but record 1 is plain text (strings): one dataset holds one form "
                              "(trl formats a dataset by its first row)")


HH_ROWS = [
    {"chosen": "\n\nHuman: Is it safe?\n\nAssistant: Yes, with care.",
     "rejected": "\n\nHuman: Is it safe?\n\nAssistant: No idea."},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant: Goodbye!",
     "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant: Go."},
    {"chosen": "ab", "rejected": "abc"},             # one a prefix of the other
    {"chosen": "Same start X", "rejected": "Same start Y"},
]


def test_implicit_prompt_splits_as_trls_extract_prompt():
    """HH-RLHF rows (chosen/rejected only, whole transcripts): prompt and responses exactly as
    trl's own extract_prompt gives them, strings and message lists alike."""
    from trl.data_utils import extract_prompt

    for row in HH_ROWS + CHAT_RECORDS:
        [pair] = pairs_from_records([row])
        assert pair.trl_row() == extract_prompt(row), row
    [pair] = pairs_from_records([HH_ROWS[0]])
    assert pair.prompt_text == "\n\nHuman: Is it safe?\n\nAssistant:"
    assert pair.chosen_text == " Yes, with care." and not pair.conversational


def test_hh_rlhf_as_published_splits_as_trl_does():
    """The shipped HH-RLHF harmless-base test file (gzipped, as Anthropic publishes it): every
    one of its 2,312 rows loads, split exactly as trl's extract_prompt splits it."""
    import gzip
    from pathlib import Path

    from trl.data_utils import extract_prompt

    path = (Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "hh-rlhf"
            / "harmless-base-test.jsonl.gz")
    rows = [json.loads(line) for line in gzip.open(path)]
    pairs = load_pairs(path)
    assert len(pairs) == len(rows) == 2312
    assert [p.trl_row() for p in pairs] == [extract_prompt(r) for r in rows]
    assert not any(p.conversational for p in pairs)
    empty = [p for p in pairs if not p.chosen_text.strip()]    # last answer empty: kept
    assert len(empty) == 4 and all(p.prompt_text.endswith("Assistant:") for p in empty)


def test_implicit_prompt_that_shares_nothing_is_refused():
    with pytest.raises(InputError) as err:
        pairs_from_records([{"chosen": "yes", "rejected": "no"}])
    assert str(err.value) == ("<records>:1: field 'prompt' is missing, and 'chosen'/'rejected' "
                              "share no prompt text (an implicit prompt is their common prefix)")


def test_a_response_must_end_on_an_assistant_message():
    turns = [user("a"), assistant("b")]
    with pytest.raises(InputError) as err:
        pairs_from_records([{"chosen": turns + [user("c")], "rejected": turns + [assistant("R")]}])
    assert str(err.value) == ("<records>:1: field 'chosen' must end on an assistant message, "
                              "ends on a 'user' message (trl would train on it as the completion)")


def test_an_explicit_conversational_prompt_is_kept_as_given():
    """trl keeps a conversational prompt column as it is, even when both responses share their
    first messages."""
    record = {"prompt": [user("P")], "chosen": [assistant("A"), user("more"), assistant("C")],
              "rejected": [assistant("A"), user("more"), assistant("R")]}
    [pair] = pairs_from_records([record])
    assert pair.trl_row() == record


def test_ultrafeedback_style_record():
    system = {"role": "system", "content": "Be brief."}
    record = {"prompt": "P", "prompt_id": "x",
              "chosen": [system, user("P"), assistant("C")],
              "rejected": [system, user("P"), assistant("R")],
              "score_chosen": 8.0, "score_rejected": 3.0}
    [pair] = pairs_from_records([record])
    assert pair.prompt == (system, user("P"))
    assert (pair.chosen, pair.rejected) == ((assistant("C"),), (assistant("R"),))
    assert (pair.prompt_text, pair.chosen_text, pair.rejected_text) == ("P", "C", "R")
    assert pair.record is record


def test_multi_turn_prefix_and_extra_message_keys():
    turns = [user("a"), {"role": "assistant", "content": "b", "name": "bot"}, user("c")]
    [pair] = pairs_from_records([{"chosen": turns + [assistant("C")],
                                  "rejected": turns + [assistant("R")]}])
    assert pair.prompt == (user("a"), assistant("b"), user("c"))
    assert all(type(m) is dict for m in pair.prompt + pair.chosen + pair.rejected)


def test_chat_responses_without_shared_prefix_use_prompt_field():
    [flat] = pairs_from_records([RECORDS[0]])
    string_prompt = {"prompt": "What is 2+2?", "chosen": [assistant("4")],
                     "rejected": [assistant("5")]}
    message_prompt = dict(string_prompt, prompt=[user("What is 2+2?")])
    assert canonical(pairs_from_records([string_prompt])) == canonical([flat])
    assert canonical(pairs_from_records([message_prompt])) == canonical([flat])


def test_response_is_everything_after_the_shared_prefix():
    [pair] = pairs_from_records([{"chosen": [user("P"), assistant("C")],
                                  "rejected": [user("P"), assistant("C"), user("more"),
                                               assistant("R")]}])
    assert pair.prompt == (user("P"),)
    assert pair.chosen == (assistant("C"),)
    assert pair.rejected == (assistant("C"), user("more"), assistant("R"))


# --- ids ----------------------------------------------------------------------------------------

def test_content_id_is_stable_and_sensitive():
    base = ((user("P"),), (assistant("C"),), (assistant("R"),))
    assert content_id(*base) == "4afb4753d370c22a"
    [pair] = pairs_from_records([{"prompt": "P", "chosen": "C", "rejected": "R"}])
    assert pair.id == "4afb4753d370c22a"
    changed = [
        ((user("P2"),), base[1], base[2]),
        (({"role": "system", "content": "P"},), base[1], base[2]),
        (base[0], (assistant("C2"),), base[2]),
        (base[0], base[1], (assistant("R2"),)),
        (base[0], base[2], base[1]),
    ]
    assert len({content_id(*c) for c in changed} | {content_id(*base)}) == 6


def test_own_id_field_is_used():
    records = [dict(RECORDS[0], id=7), dict(RECORDS[1], uid="b-1"), dict(RECORDS[2], id=None)]
    pairs = pairs_from_records(records)
    assert [p.id for p in pairs[:2]] == ["7", pairs_from_records([RECORDS[1]])[0].id]
    assert pairs[2].id == content_id(pairs[2].prompt, pairs[2].chosen, pairs[2].rejected)
    [remapped] = pairs_from_records([records[1]], FieldMap.parse(["id=uid"]))
    assert remapped.id == "b-1"


def test_csv_empty_id_cell_means_no_id(tmp_path):
    path = write_csv(tmp_path / "p.csv", [dict(r, id="") for r in RECORDS[:2]]
                     + [dict(RECORDS[2], id="x9")])
    assert [p.id for p in load_pairs(path)] == \
        [p.id for p in pairs_from_records(RECORDS[:2])] + ["x9"]


def test_pairs_are_hashable():
    pairs = pairs_from_records(RECORDS)
    assert len(set(pairs)) == 3 and isinstance(pairs[0], PreferencePair)


# --- validation ---------------------------------------------------------------------------------

P, C, R = "prompt", "chosen", "rejected"
SHAPE = "must be a string or a list of {role, content} messages"


@pytest.mark.parametrize("bad, message", [
    ({P: "p", R: "r"}, "field 'chosen' is missing"),
    ({P: "p", C: "c"}, "field 'rejected' is missing"),
    ({P: "p", C: None, R: "r"}, "field 'chosen' is missing"),
    ({C: "c", R: "r"}, "field 'prompt' is missing, and 'chosen'/'rejected' share no prompt "
                       "text (an implicit prompt is their common prefix)"),
    ({P: "p", C: 5, R: "r"}, f"field 'chosen' {SHAPE}"),
    ({P: "p", C: "c", R: {"text": "r"}}, f"field 'rejected' {SHAPE}"),
    ({P: 3, C: "c", R: "r"}, f"field 'prompt' {SHAPE}"),
    ({C: [{"role": "user"}], R: [assistant("r")]}, f"field 'chosen' {SHAPE}"),
    ({C: [assistant("c")], R: ["r"]}, f"field 'rejected' {SHAPE}"),
    ({C: [{"role": 1, "content": "c"}], R: [assistant("r")]}, f"field 'chosen' {SHAPE}"),
    ({P: "p", C: "c", R: [assistant("r")]},
     "field 'rejected' must have the same form as 'chosen' (both strings or both message lists)"),
    ({P: "p", C: " \n\t", R: "r"}, "field 'chosen' is empty"),
    ({P: "p", C: "c", R: ""}, "field 'rejected' is empty"),
    ({P: "  ", C: "c", R: "r"}, "field 'prompt' is empty"),
    ({C: [], R: [assistant("r")]}, "field 'chosen' is empty"),
    ({C: [user("p"), assistant(" ")], R: [user("p"), assistant("r")]},
     "field 'chosen' is empty"),
    ({C: [assistant("c")], R: [assistant("r")]},
     "field 'prompt' is missing and 'chosen'/'rejected' share no prompt messages"),
    ({P: [], C: [assistant("c")], R: [assistant("r")]}, "field 'prompt' is empty"),
    ({P: "p", C: "same", R: "same"}, "field 'rejected' is identical to 'chosen'"),
    ({C: [user("p"), assistant("x")], R: [user("p"), assistant("x")]},
     "field 'rejected' is identical to 'chosen'"),
])
def test_bad_records(tmp_path, bad, message):
    path, err = jsonl_error(tmp_path, [RECORDS[0], "", bad, {P: "later", C: "", R: "r"}])
    assert err == f"{path}:3: {message}"


def test_error_carries_location_fields(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{P: "p", C: "", R: "r"}])
    with pytest.raises(InputError) as info:
        load_pairs(path)
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 1, "chosen")


def test_remapped_field_names_in_errors(tmp_path):
    path, err = jsonl_error(tmp_path, [{"q": "p", "better": "c", "worse": "c"}],
                            fields=FieldMap.parse(["prompt=q", "chosen=better", "rejected=worse"]))
    assert err == f"{path}:1: field 'worse' is identical to 'better'"


def test_jsonl_syntax_errors(tmp_path):
    path, err = jsonl_error(tmp_path, [RECORDS[0], "{bad"])
    assert err == f"{path}:2: invalid JSON (Expecting property name enclosed in double quotes " \
                  f"at column 2)"
    path, err = jsonl_error(tmp_path, [RECORDS[0], "[1, 2]"])
    assert err == f"{path}:2: expected a JSON object"


def test_jsonl_non_utf8_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(json.dumps(RECORDS[0]).encode() + b"\n"
                     + b'{"prompt": "\xff\xfe", "chosen": "c", "rejected": "r"}\n')
    assert error_of(path) == f"{path}:2: line is not valid UTF-8"


def test_duplicate_own_ids(tmp_path):
    path, err = jsonl_error(tmp_path, [dict(RECORDS[0], id=1), dict(RECORDS[1], id=2),
                                       dict(RECORDS[2], id="1")])
    assert err == f"{path}:3: field 'id' duplicates the id of line 1"


def test_duplicate_pairs_without_ids(tmp_path):
    path, err = jsonl_error(tmp_path, [RECORDS[0], RECORDS[1], CHAT_RECORDS[0]])
    assert err == f"{path}:3: duplicates the pair on line 1 (same prompt, chosen and rejected)"
    with pytest.raises(InputError) as info:
        pairs_from_records([RECORDS[0], RECORDS[0]], origin="mem")
    assert str(info.value) == "mem:2: duplicates the pair on record 1 " \
                              "(same prompt, chosen and rejected)"


def test_csv_duplicate_ids_name_rows(tmp_path):
    path = write_csv(tmp_path / "p.csv", [dict(r, id="k") for r in RECORDS[:2]])
    assert error_of(path) == f"{path}:2: field 'id' duplicates the id of row 1"


@pytest.mark.parametrize("name, content", [
    ("p.jsonl", ""), ("p.jsonl", "\n  \n"), ("p.json", "[]"), ("p.json", '{"data": []}'),
    ("p.csv", ""), ("p.csv", "prompt,chosen,rejected\n"),
])
def test_empty_dataset(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    assert error_of(path) == f"{path}: no preference pairs (the dataset is empty)"


def test_empty_records():
    with pytest.raises(InputError) as info:
        pairs_from_records([])
    assert str(info.value) == "<records>: no preference pairs (the dataset is empty)"


def test_json_errors(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[{"prompt": "p",\n "chosen": }]')
    assert error_of(path) == f"{path}: invalid JSON (Expecting value: line 2 column 12 (char 28))"
    path.write_text('{"a": 1}')
    assert error_of(path) == (f'{path}: expected a JSON list of objects, or an object with one '
                              f'list value such as {{"data": [...]}}')
    path.write_text(json.dumps([RECORDS[0], "x"]))
    assert error_of(path) == f"{path}:2: expected a JSON object"
    path.write_bytes(b'[\n{"prompt": "\xff"}]')
    assert error_of(path) == f"{path}: not valid UTF-8 (at line 2 of the file)"


def test_csv_errors(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,chosen,rejected\np,c,r\np2,c2\n")
    assert error_of(path) == f"{path}:2: field 'rejected' is missing"
    path.write_text("prompt,chosen,rejected\np,c,r,extra\n")
    assert error_of(path) == f"{path}:1: has more values than the header has columns"
    path.write_bytes(b"prompt,chosen,rejected\np,c,r\np,\xe9,r\n")
    assert error_of(path) == f"{path}: not valid UTF-8 (at line 3 of the file)"


def test_unreadable_parquet_and_dataset_dir(tmp_path):
    path = tmp_path / "p.parquet"
    path.write_text("not parquet")
    assert error_of(path).startswith(f"{path}: not a readable Parquet file (")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert error_of(folder).startswith(f"{folder}: not a dataset written by save_to_disk (")


def test_non_mapping_record():
    with pytest.raises(InputError) as info:
        pairs_from_records([RECORDS[0], ["p", "c", "r"]])
    assert str(info.value) == "<records>:2: expected a record of named fields, got list"


# --- writing ------------------------------------------------------------------------------------

def test_write_pairs_jsonl_round_trips(tmp_path):
    records = [dict(RECORDS[0], id="a", score=1.5), RECORDS[1], dict(RECORDS[2], extra=[1])]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    pairs = load_pairs(source)
    out = tmp_path / "out.jsonl"
    write_pairs_jsonl(reversed(pairs), out)
    assert out.read_text(encoding="utf-8").splitlines() == \
        [json.dumps(r, ensure_ascii=False) for r in reversed(records)]
    assert [p.id for p in load_pairs(out)] == [p.id for p in reversed(pairs)]
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "out.jsonl"]


def test_write_pairs_jsonl_from_csv_and_overwrite(tmp_path):
    pairs = load_pairs(write_csv(tmp_path / "in.csv", RECORDS))
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    write_pairs_jsonl(pairs[:2], out)
    assert [json.loads(line) for line in out.read_text().splitlines()] == RECORDS[:2]
    assert not (tmp_path / "out.jsonl.tmp").exists()


def test_write_pairs_jsonl_failure_leaves_target_untouched(tmp_path):
    pairs = pairs_from_records([RECORDS[0], dict(RECORDS[1], tags={"x"})])
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    with pytest.raises(GradprojError) as info:
        write_pairs_jsonl(pairs, out)
    assert str(info.value) == ("<records>:2: cannot write the record as JSON "
                               "(a value of type set is not JSON serialisable)")
    assert out.read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl"]


def test_module_exports():
    assert data.Message is dict
    assert FieldMap() == FieldMap("prompt", "chosen", "rejected", "id")
