"""Loads tenets' DPO exports (JSONL and Parquet) with Hugging Face `datasets`, as TRL does, and
prints what came through: the columns, and the structure of the first row's conversations.

argv: the JSONL file, the Parquet file.  stdout: JSON {"jsonl": {...}, "parquet": {...}}.
"""
import json
import sys

from datasets import load_dataset


def describe(kind, path):
    ds = load_dataset(kind, data_files=path, split="train")
    row = ds[0]
    return {
        "rows": len(ds),
        "columns": sorted(ds.column_names),
        "prompt": row["prompt"],
        "chosen": row["chosen"],
        "rejected": row["rejected"],
        "p_chosen": [r for r in ds["p_chosen"]],
    }


json.dump({"jsonl": describe("json", sys.argv[1]), "parquet": describe("parquet", sys.argv[2])},
          sys.stdout)
