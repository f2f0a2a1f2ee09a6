"""The peers: GuideLLM and AIPerf, each installed from PyPI into its own venv under a cache dir
(never into latbench's environment), and the tiny local tokenizer both need.

No model hub is reachable here, so the harness builds a word-level tokenizer with `tokenizers`
(one token per whitespace-separated word, as the simulator counts) and saves it as a
Hugging Face tokenizer directory that `AutoTokenizer.from_pretrained(path)` loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CACHE = Path(os.environ.get("LATBENCH_BENCH_CACHE", Path.home() / ".cache" / "latbench-bench"))
PEERS = {"guidellm": "guidellm==0.8.1", "aiperf": "aiperf==0.13.0"}


def venv_bin(name: str, tool: str) -> Path:
    return CACHE / name / "bin" / tool


def install(name: str) -> Path:
    """The peer's venv (created and filled on first use); its own python runs everything."""
    req = PEERS[name]
    venv = CACHE / name
    stamp = venv / ".installed"
    if stamp.exists() and stamp.read_text() == req:
        return venv
    CACHE.mkdir(parents=True, exist_ok=True)
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # tokenizers builds the local tokenizer; both peers already depend on it (via transformers).
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", req, "tokenizers"],
        check=True,
    )
    stamp.write_text(req)
    return venv


_BUILD = """
import json, pathlib, sys
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
out = pathlib.Path(sys.argv[1])
vocab = {"[UNK]": 0, "[EOS]": 1}
for w in json.loads((out / "words.json").read_text()):
    vocab.setdefault(w, len(vocab))
tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
tok.save(str(out / "tokenizer.json"))
special = {"unk_token": "[UNK]", "eos_token": "[EOS]"}
config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 10**6, **special}
(out / "tokenizer_config.json").write_text(json.dumps(config))
(out / "special_tokens_map.json").write_text(json.dumps(special))
"""


def tokenizer_dir() -> Path:
    """A word-level tokenizer over the words latbench's prompts and the simulator's answers use,
    built once by the GuideLLM venv's `tokenizers`."""
    out = CACHE / "tokenizer"
    if (out / "tokenizer.json").exists():
        return out
    from latbench.sim.generate import _CONTENT_WORDS, _REASONING_WORDS
    from latbench.workload import DEFAULT_VOCABULARY

    out.mkdir(parents=True, exist_ok=True)
    words = [w.strip() for w in (*_CONTENT_WORDS, *_REASONING_WORDS)] + list(DEFAULT_VOCABULARY)
    (out / "words.json").write_text(json.dumps(words))
    install("guidellm")
    subprocess.run([str(venv_bin("guidellm", "python")), "-c", _BUILD, str(out)], check=True)
    return out
