"""Data prep at scale: a 1,000,000-row (~1 GB) SFT JSONL drop with known defects, validated to Parquet by the code
``sft_dataset`` runs (``prepare_drop``, then the stored dataset's contract check), in a child process whose peak RSS
is its own ``ru_maxrss``. The generator records every row it broke, so the check is exact: each broken row is in the
quarantine with its row number and reason, each copy in the duplicates table naming the row it repeats.

``python -m benchmarks.run --parts data_prep`` (``--quick``: 20,000 rows); ``python -m benchmarks.data_prep FILE OUT``
is the child.
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from llm_assets.markdown import markdown_table

ROOT = Path(__file__).resolve().parent.parent
MAX_CHARS = 100_000  # DatasetConfig.max_chars's default
# Share of rows broken in each way, and the quarantine reason each must get.
DEFECTS = {"malformed_json": 0.004, "missing_field": 0.004, "empty_text": 0.004, "not_utf8": 0.002, "nul_byte": 0.001,
           "too_long": 0.0005}
DUPLICATE_SHARE = 0.02  # exact copies of an earlier good row
EMAIL_SHARE, PHONE_SHARE = 0.02, 0.01  # good rows with PII to scrub


@dataclass
class Expected:
    rows: int = 0
    quarantined: dict[int, str] = field(default_factory=dict)  # source row -> reason
    duplicates: dict[int, int] = field(default_factory=dict)  # source row -> the row it repeats
    pii: dict[str, int] = field(default_factory=lambda: {"email": 0, "phone": 0})


def generate_drop(path: Path, rows: int, seed: int = 0) -> Expected:
    """``rows`` prompt/completion lines of about 1 KB (random words), with the defects above at random places."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10))) for _ in range(5000)]
    expected, originals = Expected(rows), []  # originals: (row, line) of recent good rows to copy
    cuts = []
    total = 0.0
    for reason, share in DEFECTS.items():
        total += share
        cuts.append((total, reason))
    with open(path, "wb") as out:
        for n in range(1, rows + 1):
            x = rng.random()
            if x < DUPLICATE_SHARE and originals:
                first, line = rng.choice(originals)
                expected.duplicates[n] = first
                out.write(line)
                continue
            row = {"prompt": " ".join(rng.choices(vocab, k=90)), "completion": " ".join(rng.choices(vocab, k=55)),
                   "source": "bench"}
            y = rng.random()
            reason = next((r for cut, r in cuts if y < cut), None)
            pii = None
            if reason is None and y < total + EMAIL_SHARE:
                row["prompt"] += f" write to {rng.choice(vocab)}.{n}@gmail.com"
                pii = "email"
            elif reason is None and y < total + EMAIL_SHARE + PHONE_SHARE:
                row["completion"] += f" or call +44 20 7946 {n % 10000:04d}"
                pii = "phone"
            if reason == "missing_field":
                del row["completion"]
            elif reason == "empty_text":
                row["completion"] = ""
            elif reason == "too_long":
                row["completion"] = "long " * (MAX_CHARS // 5 + 1)
            line = json.dumps(row).encode()
            if reason == "malformed_json":
                line = line[: len(line) // 2]
            elif reason == "not_utf8":
                line = line.replace(b'"prompt": "', b'"prompt": "\xe9', 1)
            elif reason == "nul_byte":
                line = line.replace(b'"prompt": "', b'"prompt": "\x00', 1)
            line += b"\n"
            out.write(line)
            if reason:
                expected.quarantined[n] = reason
                continue
            if pii:
                expected.pii[pii] += 1
            originals.append((n, line))
            if len(originals) > 1000:
                originals.pop(rng.randrange(len(originals)))
    return expected


def child(source: Path, out: Path) -> dict:
    """What the sft_dataset asset does with a landed file, timed: validate to Parquet, then check the stored dataset."""
    from llm_assets.data.prepare import prepare_drop, stored_dataset_problems

    t0, c0 = time.perf_counter(), time.process_time()
    tally = prepare_drop("sft", source.name, source, out, max_chars=MAX_CHARS)
    t1, c1 = time.perf_counter(), time.process_time()
    stored = stored_dataset_problems("sft", out / "dataset.parquet")
    t2, c2 = time.perf_counter(), time.process_time()
    return {"rows_in": tally.rows_in, "rows_kept": tally.rows_kept, "rows_quarantined": tally.rows_quarantined,
            "rows_duplicate": tally.rows_duplicate, "pii": dict(tally.pii_counts), "prepare_s": t1 - t0, "check_s": t2 - t1,
            "prepare_cpu_s": c1 - c0, "check_cpu_s": c2 - c1,
            "contract_violations": stored.violations, "stored_duplicates": stored.duplicate_rows,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def quarantine_matches(out: Path, expected: Expected) -> dict:
    """Every broken row in the quarantine with its row number and reason, every copy in the duplicates table, nothing else."""
    import pyarrow.parquet as pq

    q = pq.read_table(out / "quarantine.parquet", columns=["source_row", "reason"]).to_pydict()
    d = pq.read_table(out / "duplicates.parquet").to_pydict()
    found = dict(zip(q["source_row"], q["reason"]))
    dups = dict(zip(d["source_row"], d["duplicate_of"]))
    return {"quarantine_exact": found == expected.quarantined, "duplicates_exact": dups == expected.duplicates,
            "missing_from_quarantine": len(set(expected.quarantined) - set(found)),
            "wrong_reason": sum(1 for n, r in expected.quarantined.items() if n in found and found[n] != r),
            "unexpected_in_quarantine": len(set(found) - set(expected.quarantined))}


def data_prep(work: Path, quick: bool = False) -> dict:
    rows = 20_000 if quick else 1_000_000
    work.mkdir(parents=True, exist_ok=True)
    source, out = work / "bench_sft.jsonl", work / "out"
    out.mkdir(exist_ok=True)
    t = time.perf_counter()
    expected = generate_drop(source, rows)
    generate_s = time.perf_counter() - t
    load_before = os.getloadavg()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.data_prep", str(source), str(out)], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"data_prep child failed:\n{proc.stderr[-3000:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    checks = quarantine_matches(out, expected)
    kept = rows - len(expected.quarantined) - len(expected.duplicates)
    result = {"rows": rows, "file_bytes": source.stat().st_size, "generate_s": generate_s, **figures, **checks,
              "expected_kept": kept, "expected_pii": expected.pii, "rows_per_s": rows / figures["prepare_s"],
              "rows_per_s_with_check": rows / (figures["prepare_s"] + figures["check_s"]),
              "rows_per_cpu_s": rows / figures["prepare_cpu_s"],
              "load_average_before": load_before, "load_average_after": os.getloadavg()}
    print(markdown_table(
        ["rows", "file MB", "rows/s (validate to Parquet)", "rows per CPU s", "rows/s (+ stored check)", "peak RSS MB", "kept",
         "quarantined", "duplicates", "quarantine exact", "duplicates exact", "load avg (1 min) before / after"],
        [[f"{rows:,}", f"{result['file_bytes'] / 1e6:,.0f}", f"{result['rows_per_s']:,.0f}", f"{result['rows_per_cpu_s']:,.0f}",
          f"{result['rows_per_s_with_check']:,.0f}",
          f"{figures['peak_rss_mb']:,.0f}", f"{figures['rows_kept']:,}", f"{figures['rows_quarantined']:,}",
          f"{figures['rows_duplicate']:,}", checks["quarantine_exact"], checks["duplicates_exact"],
          f"{load_before[0]:.1f} / {result['load_average_after'][0]:.1f}"]]))
    source.unlink()
    return result


if __name__ == "__main__":
    print(json.dumps(child(Path(sys.argv[1]), Path(sys.argv[2]))))
