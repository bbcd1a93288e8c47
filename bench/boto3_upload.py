"""The raw-uploader baseline for bench.py: boto3 ``upload_file`` of every file under a folder.

Run as its own process (by bench.py) so that its wall time and peak RSS are measured exactly like the other tools',
Python start-up included. Files go one after another; each file's parts go up on ``--threads`` threads in parts of
``--part-mib`` MiB. Like llmdr, it asks botocore for no client-side checksums (``when_required``), so this is the
cost of moving the bytes and nothing else. Keys come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

MiB = 1024 * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="folder to upload")
    ap.add_argument("bucket")
    ap.add_argument("--endpoint", required=True, help="S3 endpoint URL, e.g. http://127.0.0.1:38333")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--part-mib", type=int, default=16)
    args = ap.parse_args()

    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=args.endpoint,
        region_name="us-east-1",
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        config=Config(
            s3={"addressing_style": "path"},
            max_pool_connections=args.threads,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    part = args.part_mib * MiB
    transfer = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=args.threads,
                              use_threads=True)
    files = sorted(p for p in args.source.rglob("*") if p.is_file())
    for path in files:
        client.upload_file(str(path), args.bucket, path.relative_to(args.source).as_posix(), Config=transfer)


if __name__ == "__main__":
    main()
