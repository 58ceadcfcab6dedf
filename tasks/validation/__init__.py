"""Stage 2, validate: preference-specific checks, a quarantine, a gate, a grouped train/test split.

    checks.py      the one registry of check ids: meaning, default level, row or dataset kind
    readers.py     check_readable, iter_chunks, read_pairs and the per-format readers (gzip too)
    jsonstream.py  the incremental parser for one big JSON array
    layouts.py     published layouts read into TRL's columns: column mapping, system column,
                   ultrafeedback_binarized (prompt + whole conversations), repeated prompt turns
    fields.py      a row's fields: value kinds, conversations split into texts, text flags
    overlap.py     normalised prompt text: repeated inside a response, or in the evaluation set
    tokens.py      token lengths after the chat template (TokenCounter: skeletons, unit sums)
    hashing.py     64-bit text/pair hashes, the hash index, the seeded prompt buckets
    rowchecks.py   what one chunk decides alone (check_chunk: row checks, texts, hashes, lengths)
    parallel.py    chunks checked in worker processes, merged in file order (validation.workers)
    validator.py   the checks engine (Validator: chunks merged in order, counts and hashes kept)
    report.py      ValidationReport (report.json, typed), token-length percentiles, the gate's verdict
    outputs.py     quarantine, split and summary writers
    stage.py       validate_file, validate_pairs, split_by_prompt: the entry points

This file imports nothing on purpose: conf/validation.py imports checks.py, and importing the
package must not pull in pandas or the validator (nor loop back into conf).
"""
