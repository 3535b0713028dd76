import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
import pytest

@pytest.fixture(scope='session')
def demo_tok():
    "kdkit's shipped demo tokenizer (512 entries)."
    from kdkit.data import demo_tokenizer
    return demo_tokenizer()

@pytest.fixture(scope='session')
def toy_tok():
    "The stand-in tokenizer of tests/tiny.py (300 entries)."
    from tiny import ToyTokenizer
    return ToyTokenizer()

@pytest.fixture(scope='module')
def ref(tmp_path_factory):
    "An uninterrupted single-process top-k cache of the cache tests' data (tests/cache_worker.py), merged into one file."
    import cache_worker as W
    return W.make_generator().generate(W.toy_blocks(), tmp_path_factory.mktemp('ref') / 'ref.h5')
