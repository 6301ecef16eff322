"""`bgeort embed MODEL INPUT... -o OUTPUT`: embed a corpus from files, resumably (the job's design is in
bgeort/cli/job.py, the formats in bgeort/cli/formats.py). Without -o, `bgeort embed MODEL --text A --text B`
embeds the texts given and prints their cosine similarity matrix."""

from __future__ import annotations

import itertools
import sys
import time

import numpy as np

from ..quantize import OUTPUT_DTYPES, stored_numpy_dtype, stored_width
from . import corpus
from .job import PartialOutput

HELP = "embed files of texts into .parquet/.npy/.jsonl (resumable), or texts given with --text"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a model folder written by `make export`")
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="files of texts: .txt (a text a line), .jsonl, .csv, .tsv, .parquet, any text one "
                             "+ .gz, or - for stdin; several are one stream")
    parser.add_argument("--text", action="append", default=[], dest="more_texts", metavar="TEXT",
                        help="a text to embed and compare (repeatable; prints the similarity matrix)")
    parser.add_argument("--text-field", default="text", help="the field that holds the text (default: text)")
    parser.add_argument("--queries", action="store_true", help="prepend the model's query instruction")
    parser.add_argument("--instruction", help="prepend this text to every text instead")
    parser.add_argument("--output-dtype", choices=OUTPUT_DTYPES, default="float32",
                        help="stored vector type (int8/uint8 use the ranges measured at export)")
    corpus.add_input_arguments(parser)


def run(args) -> int:
    if args.output is None:
        if args.inputs:
            raise SystemExit(f"bgeort embed: INPUT files need an output: add -o OUTPUT (.parquet, .npy or .jsonl); "
                             f"to embed texts typed here, give each with --text")
        if not args.more_texts:
            raise SystemExit("bgeort embed: give the texts to embed, e.g. --text 'first' --text 'second', "
                             "or files and -o OUTPUT")
        return show(args.model, args.more_texts, precision=args.precision, device=args.device, queries=args.queries)
    if args.more_texts or not args.inputs:
        raise SystemExit("bgeort embed: with -o, give INPUT files (or - for stdin), not --text")
    if args.queries and args.instruction is not None:
        raise SystemExit("bgeort embed: give --queries or --instruction, not both")
    try:
        return embed_files(args)
    except KeyboardInterrupt:
        print(f"\nbgeort embed: interrupted; what was written is kept in {args.output}.partial: "
              "run the same command to continue", file=sys.stderr)
        return 130


def embed_files(args) -> int:
    from .. import Embedder

    inputs = corpus.describe_inputs(args.inputs, args.input_format)
    output_format = corpus.formats.output_format(args.output)
    model = Embedder(args.model, precision=args.precision, device=args.device, threads=args.threads,
                     max_batch_tokens=args.batch_tokens)
    model.quantize(np.zeros((1, model.dim), dtype=np.float32), args.output_dtype)  # no ranges: fail before work
    instruction = (model.query_instruction if args.queries else
                   args.instruction if args.instruction is not None else model.manifest.passage_instruction)
    options = {"text_field": args.text_field, "id_field": args.id_field, "instruction": instruction,
               "max_length": model._resolve_max_length(args.max_length), "output_dtype": args.output_dtype,
               "normalize": model.normalize_embeddings}  # not --on-error: stop, then skip, resumes
    fingerprint = {"job": "embed", "model": corpus.model_fingerprint(model), "inputs": inputs, "options": options,
                   "output": output_format}
    partial = PartialOutput(args.output, fingerprint, overwrite=args.overwrite)
    totals = partial.state["totals"] or {"texts": 0, "tokens": 0, "truncated": 0, "rejected": 0, "seconds": 0.0}
    started, number = time.perf_counter(), partial.rows_read
    stream = corpus.records(inputs, args.inputs, text_field=args.text_field)
    stream = itertools.islice(stream, number, None)  # rows the saved parts already cover
    progress = corpus.Progress(total=corpus.total_rows(inputs, args.inputs), initial=number, quiet=args.quiet)
    try:
        for chunk in corpus.chunks(stream, args.chunk_rows):
            ids, texts, rejected = [], [], []
            for record in chunk:
                try:
                    text = corpus.field_text(record, args.text_field)
                    ids.append(corpus.row_id(record, args.id_field, number))
                    texts.append(instruction + text)
                except corpus.RowError as exc:
                    corpus.reject(exc, record, number, on_error=args.on_error, rejected=rejected)
                number += 1
            vectors, truncated, lengths = model.embed_window(texts, max_length=args.max_length)
            columns = {"id": ids, "embedding": model.quantize(vectors, args.output_dtype),
                       "tokens": lengths.astype(np.int32), "truncated": truncated}
            totals = corpus.add_totals(totals, count=len(texts), lengths=lengths, truncated=truncated,
                                       rejected=rejected, seconds=time.perf_counter() - started)
            started = time.perf_counter()
            partial.commit(columns, rows_read=number, rejected=rejected, totals=totals)
            progress.update(len(chunk), int(lengths.sum()))
    finally:
        progress.close()
    width, dtype = stored_width(args.output_dtype, model.dim), stored_numpy_dtype(args.output_dtype)
    empty = {"id": [], "embedding": np.zeros((0, width), dtype=dtype), "tokens": np.zeros(0, dtype=np.int32),
             "truncated": np.zeros(0, dtype=bool)}
    rejected_file = partial.assemble(order=list(empty), matrix="embedding", width=width, dtype=dtype, empty=empty)
    report(args.output, totals, rejected_file, resumed=partial.resumed)
    return 0


def report(output: str, totals: dict, rejected_file, *, resumed: bool) -> None:
    if totals["texts"] == 0 and totals["rejected"] == 0:
        print(f"bgeort embed: the inputs hold no rows; wrote an empty {output}", file=sys.stderr)
    line = (f"{totals['texts']} texts, {totals['tokens']} tokens, {totals['truncated']} truncated, "
            f"{totals['rejected']} rejected rows, {totals['seconds']:.1f} s -> {output}")
    if rejected_file is not None:
        line += f" (rejected rows: {rejected_file})"
    print(line + (" (resumed)" if resumed else ""), file=sys.stderr)


def show(model_path, texts: list[str], *, precision: str, device: str, queries: bool = False) -> int:
    from .. import Embedder

    model = Embedder(model_path, precision=precision, device=device)
    vectors = model.encode_queries(texts) if queries else model.encode(texts)
    print(model)
    print(f"vectors: shape {vectors.shape}, dtype {vectors.dtype}, norms {np.round(np.linalg.norm(vectors, axis=1), 4)}")
    for text, row in zip(texts, vectors @ vectors.T):
        print(" ".join(f"{value:6.3f}" for value in row), " ", text[:60])
    return 0
