#!/usr/bin/env python3
"""Bulk export of embeddings with Spark: every executor encrypts its partitions through the
vecseald running on ITS OWN node (the node-local socket), so no vector leaves the node in clear
and the HSM sees one derivation stream per node. Works unchanged with Ray (see docs/scaling.md).

    spark-submit spark_encrypt.py --key support-ratings \
        --input s3a://bucket/embeddings.parquet --output s3a://bucket/sealed.parquet

The input has columns `id` and `embedding` (array<float>). Without Spark (`--local IN OUT`, JSON
lines of {"id", "embedding"}) it runs the same partition function in one process, which is how
the test suite runs it.
"""
import argparse
import json
import os
import sys


def encrypt_partition(rows, key, socket_path=None):
    """Spark/Ray partition function: (id, embedding) rows in, (id, encrypted embedding) out, the
    same one vecseal.dask uses. Imported inside, because it runs on the executors, which need only
    the vecseal client (and numpy)."""
    from vecseal.partitions import encrypt_rows
    return encrypt_rows(rows, key, socket_path=socket_path)


def run_spark(args):
    from pyspark.sql import SparkSession
    spark = SparkSession.builder.appName(f"vecseal-export-{args.key}").getOrCreate()
    frame = spark.read.parquet(args.input).select("id", "embedding")
    key, socket_path = args.key, args.socket
    sealed = frame.rdd.map(lambda r: (r["id"], r["embedding"])).mapPartitions(
        lambda rows: encrypt_partition(rows, key, socket_path))
    spark.createDataFrame(sealed, frame.schema).write.mode("overwrite").parquet(args.output)
    spark.stop()


def run_local(args):
    with open(args.local[0]) as source, open(args.local[1], "w") as sink:
        rows = ((r["id"], r["embedding"]) for r in map(json.loads, source))
        for row_id, vector in encrypt_partition(rows, args.key, args.socket):
            sink.write(json.dumps({"id": row_id, "embedding": vector}) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--key", required=True)
    parser.add_argument("--socket", default=os.environ.get("VECSEAL_SOCKET"),
                        help="default $VECSEAL_SOCKET, else /run/vecseal/vecseald.sock")
    parser.add_argument("--input")
    parser.add_argument("--output")
    parser.add_argument("--local", nargs=2, metavar=("IN", "OUT"))
    args = parser.parse_args()
    if args.local:
        run_local(args)
    elif args.input and args.output:
        run_spark(args)
    else:
        parser.error("give --input and --output (Spark), or --local IN OUT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
