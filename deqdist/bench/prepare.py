"""`deqdist bench prepare`: tokenizing throughput, tokenizer-training memory, and BPE against bytes in `tiny`.

1. Throughput on the built-in corpus (this Python's stdlib source) with a
   4,096-token BPE: `deqdist prepare` (reading, hashing, splitting, encoding in
   1 and 2 worker processes, writing shards) in MB/s of text, as a ratio to the
   library's own batch encoder on one process (`encode_batch_fast`, the call the
   workers make, where the library has it; one thread, as each worker runs, and,
   for reference, with its default thread pool).
2. Peak memory (max RSS of a child process) of training a 32,768-token BPE on a
   sample capped at 1/10 of a corpus, against training on all of it.
3. `tiny` trained (default 400 steps) on the built-in corpus prepared with that
   BPE and byte-level, same documents in each split: test bits per byte of text
   side by side, with the wall time each took.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import table

BPE_VOCAB = 4096
MEMORY_VOCAB = 32768
FRACTIONS = (0.9, 0.05, 0.05)


def builtin_files() -> list[Path]:
    from ..data.builtin import SKIP_DIRS, stdlib_root
    from ..data.text import list_files

    root = stdlib_root()
    return [root / r for r in list_files(root, SKIP_DIRS) if r.endswith(".py")]


def _library_rate(tok_json: str, texts: list[str], threads: bool) -> float:
    """MB/s of the library's encode_batch over all pieces, in a fresh process (thread setting is per process)."""
    code = ("import json,sys,time,tokenizers; t=tokenizers.Tokenizer.from_str(open(sys.argv[1]).read()); "
            "x=json.load(open(sys.argv[2])); f=getattr(t,'encode_batch_fast',t.encode_batch); s=time.perf_counter(); "
            "f(x, add_special_tokens=False); "
            "print(time.perf_counter()-s)")
    with tempfile.TemporaryDirectory() as d:
        Path(d, "t.json").write_text(tok_json)
        Path(d, "x.json").write_text(json.dumps(texts))
        env = dict(os.environ, TOKENIZERS_PARALLELISM="true" if threads else "false")
        secs = float(subprocess.run([sys.executable, "-c", code, f"{d}/t.json", f"{d}/x.json"], env=env,
                                    check=True, capture_output=True, text=True).stdout)
    return sum(len(t.encode()) for t in texts) / secs / 1e6


def throughput(files: list[Path], work: Path) -> tuple[list[list], Path, Path]:
    from ..prepare import shards
    from ..prepare.command import PIECE_CHARS, Options, prepare
    from ..prepare.tokenizer import train_bpe

    texts = [p.read_text(encoding="utf-8") for p in files]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    t0 = time.perf_counter()
    codec = train_bpe(iter(texts), BPE_VOCAB)
    train_s = time.perf_counter() - t0
    tok_file = work / "bpe4096.json"
    tok_file.write_text(codec.to_json())
    pieces = [p for t in texts for p in shards.pieces(t, PIECE_CHARS)]
    base = _library_rate(codec.to_json(), pieces, threads=False)
    rows = [["library encode_batch(_fast), 1 process, 1 thread", f"{base:.2f}", "1.00", "-"],
            [f"library encode_batch(_fast), 1 process, default threads ({os.cpu_count()} CPUs)",
             f"{_library_rate(codec.to_json(), pieces, threads=True):.2f}", "-", "-"]]
    dirs = {}
    for w in (1, 2):
        dirs[w] = work / f"bpe-w{w}"
        t0 = time.perf_counter()
        prepare(Options([str(f) for f in files], dirs[w], tokenizer_file=str(tok_file), workers=w,
                        fractions=FRACTIONS, progress=False))
        rate = mb / (time.perf_counter() - t0)
        rows.append([f"deqdist prepare, {w} worker(s) (read, hash, split, encode, write)", f"{rate:.2f}",
                     f"{rate / base:.2f}", f"{1 - rate / base / w:+.0%}"])
    same = all((dirs[1] / n).read_bytes() == (dirs[2] / n).read_bytes() for n in os.listdir(dirs[1]))
    rows.append([f"(BPE training on all {mb:.1f} MB: {train_s:.1f}s; 1 and 2 workers byte-identical: {same})",
                 "", "", ""])
    return rows, dirs[2], tok_file


def _train_rss(inputs: list[Path], cap: int | None) -> tuple[float, float]:
    """(max RSS in MiB, seconds) of a child that trains a 32k BPE on a sample capped at `cap` bytes."""
    code = ("import sys,time,resource; from pathlib import Path; from deqdist.prepare import shards, inputs, tokenizer; "
            "src=inputs.expand(sys.argv[2:]); cap=int(sys.argv[1]); s=time.time(); "
            "tokenizer.train_bpe(shards.sample(src,'text',0,(1.0,0.0,0.0),1<<16,cap), 32768); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024, time.time()-s)")
    out = subprocess.run([sys.executable, "-c", code, str(cap or 1 << 62), *map(str, inputs)], check=True,
                         capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false")).stdout
    rss, secs = out.split()
    return float(rss), float(secs)


def memory(files: list[Path]) -> list[list]:
    size = sum(f.stat().st_size for f in files)
    cap = size // 10
    rows = []
    for label, c in ((f"sample capped at {cap / 1e6:.1f} MB (1/10 of the corpus)", cap),
                     (f"whole corpus, {size / 1e6:.1f} MB (no cap)", None)):
        rss, secs = _train_rss(files, c)
        rows.append([label, f"{rss:.0f}", f"{secs:.1f}"])
    return rows


def lm(files: list[Path], bpe_dir: Path, work: Path, steps: int | None) -> list[list]:
    from .. import presets
    from ..prepare.command import Options, prepare
    from ..train.loop import run_train

    byte_dir = work / "bytes"
    prepare(Options([str(f) for f in files], byte_dir, workers=2, fractions=FRACTIONS, progress=False))
    rows = []
    for name, corpus, vocab in (("byte-level (256)", byte_dir, 256), (f"BPE {BPE_VOCAB}", bpe_dir, BPE_VOCAB)):
        run_dir = work / f"run-{vocab}"
        over = [f"data.corpus={corpus}", f"model.vocab_size={vocab}", "logging.progress=off",
                "logging.sample_tokens=0", "checkpoint.every=0"] + ([f"train.steps={steps}"] if steps else [])
        t0 = time.time()
        if run_train(str(presets.path("tiny")), run_dir, over) != 0:
            raise RuntimeError(f"training tiny on {corpus} failed")
        wall = time.time() - t0
        res = json.loads((run_dir / "results.json").read_text())
        t = res["test"]
        rows.append([name, f"{t['bpb']:.4f}", f"{res['corpus']['bytes_per_token']['test']:.3f}",
                     f"{t['loss']:.4f}", f"{int(t['tokens']):,}", f"{wall:.0f}"])
    return rows


def run(steps: int | None = None, run_dir: str | None = None) -> str:
    """All three parts; the prepared directories and runs are kept under `run_dir` when given."""
    files = builtin_files()
    with tempfile.TemporaryDirectory(prefix="deqdist-bench-prepare-") as tmp:
        work = Path(run_dir) if run_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows, bpe_dir, _ = throughput(files, work)
        out = [f"### tokenizing the built-in corpus ({len(files):,} files) with a {BPE_VOCAB}-token BPE\n",
               table(["what", "MB/s of text", "x library (1 thread)", "overhead per worker"], rows)]
        out += [f"\n### peak memory training a {MEMORY_VOCAB:,}-token BPE\n",
                table(["training text", "max RSS MiB", "seconds"], memory(files))]
        out += ["\n### `tiny` on the built-in corpus: bytes against BPE (same documents per split)\n",
                table(["tokenizer", "test bits/byte of text", "test bytes/token", "test loss nats/token",
                       "test tokens", "wall s"], lm(files, bpe_dir, work, steps))]
        return "\n".join(out) + "\n"
