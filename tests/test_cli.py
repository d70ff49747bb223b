"""lfm2engine.cli: the number-list parser and the prompt resolver every command line shares."""

import os

import pytest

from lfm2engine.cli import parse_list, resolve_prompt
from lfm2engine.errors import InputError


def test_parse_list_values_ranges_and_floats():
    assert parse_list("1,2, 4", "--x") == [1, 2, 4]
    assert parse_list("1,,2,", "--x") == [1, 2]  # empty items are skipped
    assert parse_list("1-3,7", "-k", ranges=True) == [1, 2, 3, 7]
    assert parse_list("-2", "-k", ranges=True) == [-2]  # a leading '-' is a sign, not a range
    assert parse_list("0,0.3", "--t", float, low=0.0, high=1.0) == [0.0, 0.3]


@pytest.mark.parametrize("text, kw, message", [
    ("1,x", {}, "--x must be comma-separated integers, found '1,x'"),
    ("0.5,y", {"kind": float}, "--x must be comma-separated numbers, found '0.5,y'"),
    ("1-8", {}, "--x must be comma-separated integers, found '1-8'"),  # no ranges unless asked for
    ("x", {"expected": "an integer or a range 1-8"}, "--x 'x': expected an integer or a range 1-8"),
    ("x", {"name": "skip=", "expected": "layer indices"}, "skip='x': expected layer indices"),
    (" , ", {}, "--x is empty"),
    ("2,0", {"low": 1}, "--x must be >= 1, found 0"),
    ("0", {"low": 1, "meaning": "draft tokens per round"}, "--x must be >= 1 (draft tokens per round), found 0"),
    ("0.5,1.5", {"kind": float, "low": 0.0, "high": 1.0}, "--x must be in [0, 1), found 1.5"),
    ("nan", {"kind": float, "low": 0.0, "high": 1.0}, "--x must be in [0, 1), found nan"),
    ("3", {"high": 3}, "--x must be < 3, found 3"),
])
def test_parse_list_errors_name_the_flag(text, kw, message):
    kind, name = kw.pop("kind", int), kw.pop("name", "--x")
    with pytest.raises(InputError) as e:
        parse_list(text, name, kind, **kw)
    assert str(e.value) == message


def test_resolve_prompt_ids_default_and_errors(tmp_path):
    assert resolve_prompt(None, "1, 5,9", str(tmp_path), 1) == ([1, 5, 9], None)
    assert resolve_prompt(None, None, str(tmp_path), 1, default=[4, 5]).ids == [4, 5]
    for text, ids, words in [("a", "1", "not both"), (None, None, "give a prompt"), ("a", None, "--prompt needs"),
                             (None, "", "--prompt-ids is empty"), (None, "1,x", "--prompt-ids must be")]:
        with pytest.raises(InputError, match=words):
            resolve_prompt(text, ids, str(tmp_path), 1)


def test_resolve_prompt_text_through_the_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(10)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(os.path.join(tmp_path, "tokenizer.json"))
    p = resolve_prompt("w5 w7", None, str(tmp_path), 1)
    assert p.ids == [1, 5, 7] and p.tokenizer.decode([5, 7]) == "w5 w7"
    assert resolve_prompt("w5", None, str(tmp_path), None).ids == [5]  # no BOS in the config: none added
    with pytest.raises(InputError, match="--prompt is empty"):
        resolve_prompt("", None, str(tmp_path), 1)


@pytest.mark.parametrize("module", ["lfm2engine.generate", "lfm2engine.perplexity", "lfm2engine.specdecode.command",
                                    "lfm2engine.serve.__main__"])
def test_every_command_line_takes_the_same_dtypes(module, capsys):
    """One --dtype (cli.add_dtype_flag): the float types, the block types and auto; default None
    (float32 for a checkpoint directory, auto for a GGUF file); anything else exits 2 naming the choices."""
    import importlib

    from lfm2engine.weights import DTYPES

    parser = importlib.import_module(module).build_parser()
    assert DTYPES == ("float32", "bfloat16", "float16", "q8_0", "q4_0", "q4_k", "auto")
    extra = ["--model", "x", "--text", "t"] if module.endswith("perplexity") else []
    for d in DTYPES:
        assert parser.parse_args(["--dtype", d, *extra]).dtype == d
    assert parser.parse_args(extra).dtype is None
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--dtype", "q5_k", *extra])
    assert e.value.code == 2 and "invalid choice: 'q5_k'" in capsys.readouterr().err
