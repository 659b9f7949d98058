"""What whole-file checkpoint digests cost: files of a model's checkpoint sizes, written, then digested as a save
marks them (`write_marker`, just after the write: the page cache is warm) and as a resume checks them
(`incomplete_reason`, after dropping the page cache where this process may: a restarted job reads from disk).

    python benchmarks/checkpoint_digest.py                      # DeepSeek-R1-Distill-Qwen-1.5B's checkpoint sizes
    python benchmarks/checkpoint_digest.py --params 0.1e9 --dir /scratch

Sizes: bf16 weights (2 bytes a parameter) and an AdamW optimizer with fp32 master weights and two fp32 moments (12
bytes a parameter), as a ZeRO-2 run of the paper's recipes saves them. The files are deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`

from trl_justrl.run_services.checkpoints import incomplete_reason, write_marker  # noqa: E402

# DeepSeek-R1-Distill-Qwen-1.5B, counted from its config.json: hidden 1,536, 28 layers, MLP 8,960, 12 heads (2 KV),
# vocabulary 151,936, untied head
PARAMS_1_5B = 1_777_088_000
BLOCK = 64 << 20


def write_file(path: Path, size: int) -> None:
    block = os.urandom(BLOCK)
    with open(path, "wb") as f:
        for start in range(0, size, BLOCK):
            f.write(block[: min(BLOCK, size - start)])
        f.flush()
        os.fsync(f.fileno())


def drop_page_cache() -> bool:
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=float, default=PARAMS_1_5B, help="parameters (default: the paper's 1.5B)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: the system's temp folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    params = int(args.params)
    sizes = {"model.safetensors": 2 * params, "optimizer.pt": 12 * params}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="checkpoint-digest-") as tmp:
        folder = Path(tmp) / "checkpoint-1"
        folder.mkdir()
        start = time.perf_counter()
        for name, size in sizes.items():
            write_file(folder / name, size)
        written_s = time.perf_counter() - start
        start = time.perf_counter()
        write_marker(folder, 1, 1)
        save_s = time.perf_counter() - start
        cold = drop_page_cache()
        start = time.perf_counter()
        assert incomplete_reason(folder) is None
        resume_s = time.perf_counter() - start
    total = sum(sizes.values())
    result = {
        "params": params, "bytes": total, "write_s": round(written_s, 1), "digest_at_save_s": round(save_s, 1),
        "check_at_resume_s": round(resume_s, 1), "resume_cache": "dropped" if cold else "warm (could not drop)",
        "digest_gb_per_s_at_save": round(total / save_s / 1e9, 2), "machine": platform.platform(),
        "cpus": os.cpu_count(), "python": platform.python_version(),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
