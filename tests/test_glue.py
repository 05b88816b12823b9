"""Every GLUE file in ../shared/data/glue parses with the row and label counts SOURCES.md gives; CoLA's
headerless format on an in-test sample; malformed rows are errors naming the file and line."""
from collections import Counter

import pytest

from data.glue import glue_file, read_glue

# SOURCES.md section 5: rows and label split of each file
COUNTS = {"sst2": (872, {1: 444, 0: 428}), "mrpc": (408, {1: 279, 0: 129}),
          "qnli": (5463, {0: 2702, 1: 2761}), "rte": (277, {0: 146, 1: 131})}


@pytest.mark.parametrize("task", sorted(COUNTS))
def test_shared_files_parse_with_documented_counts(shared_data, task):
    examples = read_glue(task, glue_file(shared_data / "glue", task))
    rows, labels = COUNTS[task]
    assert len(examples) == rows and Counter(e.label for e in examples) == labels
    assert all(e.text_a for e in examples) and all((e.text_b is None) == (task == "sst2") for e in examples)


def test_shared_stsb_and_quirks(shared_data):
    stsb = read_glue("stsb", glue_file(shared_data / "glue", "stsb"))
    assert len(stsb) == 1500 and all(0.0 <= e.label <= 5.0 for e in stsb)
    assert stsb[0] == type(stsb[0])("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0)
    assert stsb[764].text_a.startswith('"')  # GLUE's stray quote kept: no CSV quoting
    rte = read_glue("rte", glue_file(shared_data / "glue", "rte"))
    assert rte[0].text_a.startswith("Dana Reeve") and rte[0].label == 1
    mrpc = read_glue("mrpc", glue_file(shared_data / "glue", "mrpc"))
    assert mrpc[0].label == 1 and mrpc[0].text_a.startswith("He said the foodservice")  # BOM stripped


COLA_SAMPLE = ("gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n"
               "gj04\t0\t*\tThey drank the pub.\n"
               "cj99\t1\t\tThe more you eat, the less you want.\n")


def test_cola_headerless_tsv(tmp_path):
    (tmp_path / "CoLA").mkdir()
    (tmp_path / "CoLA" / "dev.tsv").write_text(COLA_SAMPLE)
    examples = read_glue("cola", glue_file(tmp_path, "cola"))
    assert [(e.text_a, e.text_b, e.label) for e in examples] == [
        ("Our friends won't buy this analysis, let alone the next one we propose.", None, 1),
        ("They drank the pub.", None, 0), ("The more you eat, the less you want.", None, 1)]


def test_glue_tsv_with_string_labels_and_errors(tmp_path):
    rte = tmp_path / "dev.tsv"
    rte.write_text("index\tsentence1\tsentence2\tlabel\n0\tA dog runs.\tAn animal moves.\tentailment\n"
                   "1\tA cat.\tA dog.\tnot_entailment\n")
    assert [e.label for e in read_glue("rte", rte)] == [0, 1]
    rte.write_text("index\tsentence1\tsentence2\tlabel\n0\tA dog runs.\tentailment\n")
    with pytest.raises(ValueError, match=r"dev.tsv:2: 3 tab-separated fields, expected 4"):
        read_glue("rte", rte)
    rte.write_text("index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tmaybe\n")
    with pytest.raises(ValueError, match=r"dev.tsv:2: label 'maybe'"):
        read_glue("rte", rte)
    rte.write_text("index\tpremise\thypothesis\tlabel\n")
    with pytest.raises(ValueError, match=r"dev.tsv:1: header .* lacks column\(s\) \['sentence1', 'sentence2'\]"):
        read_glue("rte", rte)
    with pytest.raises(ValueError, match="unknown GLUE task 'mnli'"):
        read_glue("mnli", rte)


def test_unreadable_and_empty_files_name_the_file(tmp_path):
    """Non-UTF-8 bytes and a header-only file: a ValueError naming the file (and the line), not a
    UnicodeDecodeError or an empty training set found only by the probe."""
    bad = tmp_path / "train.tsv"
    bad.write_bytes(b"sentence\tlabel\ngood\t1\nbad \xff\xfe bytes\t0\n")
    with pytest.raises(ValueError, match=r"train.tsv, line 3 \(byte \d+\): not UTF-8"):
        read_glue("sst2", bad)
    bad.write_text("sentence\tlabel\n")
    with pytest.raises(ValueError, match="train.tsv: no GLUE sst2 examples"):
        read_glue("sst2", bad)
