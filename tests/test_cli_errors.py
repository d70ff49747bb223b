"""Every CLI error is a typed error with exit code 2, found before expensive work; outputs are
written atomically (no temp file left on any failure, the user's umask, no silent mkdir); an
interrupted first-time synthetic model write leaves no temp directory that later runs keep.

Ordering is proven with a broken checkpoint: an argument error must be the error reported,
i.e. found before the weights (or even the tensor headers) were read."""

import os
import shutil
import socket

import pytest

from lfm2engine import generate, synthetic
from lfm2engine.checkpoint import atomic_writer, check_writable
from lfm2engine.errors import InputError
from lfm2engine.workload import write_inputs, write_logits


@pytest.fixture(scope="module")
def broken(hf_ckpt, tmp_path_factory):
    """moe_a with its weights file cut in half: loading it is a CheckpointError."""
    d = tmp_path_factory.mktemp("broken") / "m"
    shutil.copytree(hf_ckpt("moe_a"), d)
    st = d / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    return str(d)


def gen(argv, capsys):
    rc = generate.main(argv)
    err = capsys.readouterr().err
    return rc, err


def test_broken_checkpoint_is_a_checkpoint_error(broken, tmp_path, capsys):
    rc, err = gen(["--model", broken, "--prompt-ids", "1,2"], capsys)
    assert rc == 2 and "CheckpointError" in err


@pytest.mark.parametrize("args, words", [
    (["--prompt-ids", "1,2", "--threads", "0"], "--threads must be >= 1, found 0"),
    (["--prompt-ids", "1,2", "--threads", "-3"], "--threads must be >= 1, found -3"),
    (["--prompt-ids", "1,2", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--prompt-ids", "1,2", "-v"], "-v is for workload mode"),
    (["--prompt-ids", "1,2", "-n", "3"], "-n is for workload mode"),
    (["--prompt-ids", "1,2", "--temperature", "-1"], "temperature must be >= 0"),
    (["--prompt-ids", "1,2", "--top-p", "0"], "top_p must be in (0, 1]"),
    (["--prompt-ids", "1,2", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--prompt-ids", "1,2,97"], "prompt 0: token id 97 at position 2 is outside the vocabulary [0, 97)"),
    (["--prompt-ids", "1,-2"], "token id -2"),
    (["--prompt-ids", "1,2", "--max-new-tokens", "100000"], "exceed the context"),
    (["--prompt", "hello"], "tokenizer.json"),
    (["--max-new-tokens", "5"], "--max-new-tokens needs a prompt"),
    (["-n", "0"], "-n must be >= 1"),
    (["-w", "-1"], "-w must be >= 0"),
])
def test_argument_errors_come_before_loading(broken, args, words, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    rc, err = gen(["--model", broken, *args], capsys)
    assert rc == 2, err
    assert words in err and "CheckpointError" not in err, err
    assert err.count("\n") == 1 and "Traceback" not in err  # one line


def test_workload_errors_come_before_loading(broken, tmp_path, capsys):
    inp = tmp_path / "in.bin"
    write_inputs(str(inp), [[1, 2, 3], [4, 5, 6]])
    out = str(tmp_path / "o.bin")
    rc, err = gen(["--model", broken, "--inputs", str(inp), "-n", "3", "--outputs", out], capsys)
    assert rc == 2 and "-n 3: the workload" in err and "has 2 samples" in err
    rc, err = gen(["--model", broken, "--inputs", str(inp), "-v", "--outputs", out], capsys)
    assert rc == 2 and "-v with --inputs" in err and "needs --answers" in err
    write_logits(str(tmp_path / "a.bin"), [[0.0] * 5])
    rc, err = gen(["--model", broken, "--inputs", str(inp), "-v", "--answers", str(tmp_path / "a.bin"),
                   "--outputs", out], capsys)
    assert rc == 2 and "logits; need >= 2 × 97" in err
    bad = tmp_path / "bad.bin"
    write_inputs(str(bad), [[1, 200]])
    rc, err = gen(["--model", broken, "--inputs", str(bad), "--outputs", out], capsys)
    assert rc == 2 and "token id 200" in err
    assert "CheckpointError" not in err


def test_unwritable_outputs_fail_up_front_and_leave_nothing(broken, tmp_path, capsys, monkeypatch):
    inp = tmp_path / "in.bin"
    write_inputs(str(inp), [[1, 2, 3]])
    target = tmp_path / "adir"
    target.mkdir()
    monkeypatch.chdir(target)
    before = set(os.listdir(tmp_path)), set(os.listdir("/"))
    rc, err = gen(["--model", broken, "--inputs", str(inp), "--outputs", str(target)], capsys)
    assert rc == 2 and f"--outputs {target}: is a directory" in err and "CheckpointError" not in err
    rc, err = gen(["--model", broken, "--inputs", str(inp), "--outputs", "/"], capsys)
    assert rc == 2 and "is a directory" in err
    missing = tmp_path / "no" / "such" / "o.bin"
    rc, err = gen(["--model", broken, "--inputs", str(inp), "--outputs", str(missing)], capsys)
    assert rc == 2 and f"the directory {missing.parent} does not exist" in err
    assert not (tmp_path / "no").exists()  # no silent mkdir
    assert (set(os.listdir(tmp_path)), set(os.listdir("/"))) == before and os.listdir(target) == []


def test_atomic_writer_removes_its_temp_file_on_every_failure(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_writer(str(p)) as f:
            f.write(b"new")
            raise RuntimeError("boom")
    with pytest.raises(OSError):  # the rename fails: the target became a directory meanwhile
        with atomic_writer(str(tmp_path / "d")) as f:
            f.write(b"x")
            os.mkdir(tmp_path / "d")
    with pytest.raises(InputError, match="does not exist"):
        with atomic_writer(str(tmp_path / "missing" / "f.bin")):
            pass
    with pytest.raises(InputError, match="is a directory"):
        check_writable(str(tmp_path), "--outputs")
    assert sorted(os.listdir(tmp_path)) == ["d", "f.bin"] and p.read_bytes() == b"old"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writer_honours_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with atomic_writer(str(tmp_path / "f"), "w") as f:
            f.write("x")
        with open(tmp_path / "g", "w") as f:  # what a plain open() gives
            f.write("x")
    finally:
        os.umask(old)
    mode = os.stat(tmp_path / "f").st_mode & 0o777
    assert mode == 0o666 & ~umask == os.stat(tmp_path / "g").st_mode & 0o777


def test_interrupted_synthetic_write_leaves_no_temp_dir(tmp_path, monkeypatch):
    host = socket.gethostname()
    dead = tmp_path / f".tmp-synth-999999999@{host}-abc"  # a writer killed (SIGKILL) long ago
    live = tmp_path / f".tmp-synth-{os.getpid()}@{host}-def"  # a writer still running
    other = tmp_path / ".tmp-synth-999999999@another-host-ghi"  # cannot tell: another machine's
    for d in (dead, live, other):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"partial")

    def fail(cfg, make, out, **kw):
        with open(os.path.join(out, "model.safetensors"), "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "save_pretrained", fail)
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_synthetic(str(tmp_path / "synthetic-default"), "default", verbose=False)
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name])  # the dead one swept, ours removed


def test_workload_make_needs_an_existing_parent_directory(hf_ckpt, tmp_path, capsys):
    from lfm2engine import workload

    rc = workload.main(["make", "--model", hf_ckpt("moe_a"), "--out", str(tmp_path / "no" / "w"), "-n", "2"])
    assert rc == 2 and f"the directory {tmp_path / 'no'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
