"""The byte-level Python-stdlib corpus: file selection, dedup, held-out split, provenance, load() hook."""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from unlearnx import data
from unlearnx.data import text


@pytest.fixture
def fake_stdlib(tmp_path):
    """A miniature stdlib tree with a test package, site-packages, a duplicate and non-.py files."""
    files = {
        "os.py": b"import sys\n",
        "json/__init__.py": b"# json\n",
        "json/decoder.py": b"def decode(s):\n    return s\n",
        "json/copy_of_init.py": b"# json\n",  # exact duplicate of json/__init__.py: dropped
        "test/test_os.py": b"assert True\n",
        "ctypes/test/test_x.py": b"x = 1\n",
        "lib2to3/tests/data/bad.py": b"pass\n",
        "idlelib/idle_test/t.py": b"pass\n",
        "site-packages/pkg.py": b"pkg\n",
        "config-3.11-x86_64-linux-gnu/python-config.py": b"cfg\n",
        "_sysconfigdata__linux.py": b"build = {}\n",
        "README.txt": b"not python\n",
    }
    files.update({f"mod{i:02d}.py": f"value = {i}\n".encode() for i in range(40)})
    for relative, content in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return tmp_path, files


def _held_out(relative: str) -> bool:
    return int(hashlib.sha256(relative.encode()).hexdigest()[:16], 16) % 10_000 < 500


def test_fake_tree_selection_dedup_split_and_tokens(fake_stdlib):
    root, files = fake_stdlib
    kept = sorted(["os.py", "json/__init__.py", "json/decoder.py"] + [f"mod{i:02d}.py" for i in range(40)])
    everything = data.load("python_stdlib", "all", data_dir=root)
    assert isinstance(everything, text.TextCorpus)
    assert list(everything.names) == kept
    assert everything.metadata["duplicates_dropped"] == 1
    assert everything.tokens.dtype == np.uint8 and everything.vocab_size == 256
    assert everything.tokens.tobytes() == b"".join(files[name] for name in kept)
    for index, name in enumerate(kept):
        assert everything.document(index) == files[name]
    train, test = (data.load("python_stdlib", split, data_dir=root) for split in ("train", "test"))
    assert list(test.names) == [name for name in kept if _held_out(name)]
    assert list(train.names) == [name for name in kept if not _held_out(name)]
    whole = hashlib.sha256()
    for name in kept:
        whole.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    for corpus in (train, test, everything):
        assert corpus.metadata["content_sha256"] == whole.hexdigest()
        assert corpus.metadata["python_version"] == sys.version.split()[0]
        assert not corpus.tokens.flags.writeable


def test_real_stdlib_corpus():
    root = Path(sysconfig.get_paths()["stdlib"])
    train, test = text.load("python_stdlib", "train"), text.load("python_stdlib", "test")
    assert not set(train.names) & set(test.names)
    assert all(not {"test", "tests", "site-packages"} & set(Path(n).parts) for n in train.names + test.names)
    assert 0.02 < test.num_documents / (train.num_documents + test.num_documents) < 0.09
    assert len(train) > 2_000_000 and len(test) > 50_000  # several MB of real text
    assert train.document(train.names.index("os.py")) == (root / "os.py").read_bytes()
    contents = [train.document(i) for i in range(train.num_documents)]
    assert len(set(contents)) == len(contents)
    assert train.offsets[-1] == len(train) and np.all(np.diff(train.offsets) >= 0)


def test_errors():
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        data.load("python_stdlib", "validation")
    with pytest.raises(ValueError, match="unknown text corpus 'shakespeare'"):
        text.load("shakespeare")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        text.load("python_stdlib", "train", data_dir="/nonexistent/stdlib")
    with pytest.raises(ValueError, match="python_stdlib"):
        data.load("wikitext")
