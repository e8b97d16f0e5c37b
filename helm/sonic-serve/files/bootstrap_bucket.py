"""Create the Sonic Serve bucket on the S3 endpoint once it answers (bucket bootstrap Job).

Reads SONIC_S3_ENDPOINT, SONIC_S3_ACCESS_KEY, SONIC_S3_SECRET_KEY, SONIC_S3_SECURE and
SONIC_S3_BUCKET. Idempotent: an existing bucket is left as it is.
"""

import os
import sys
import time

from minio import Minio


def main() -> int:
    endpoint = os.environ["SONIC_S3_ENDPOINT"]
    bucket = os.environ["SONIC_S3_BUCKET"]
    secure = os.environ.get("SONIC_S3_SECURE", "false").lower() in ("1", "true", "yes")
    client = Minio(
        endpoint,
        access_key=os.environ.get("SONIC_S3_ACCESS_KEY") or None,
        secret_key=os.environ.get("SONIC_S3_SECRET_KEY") or None,
        secure=secure,
    )
    deadline = time.monotonic() + float(os.environ.get("BOOTSTRAP_TIMEOUT_S", "300"))
    while True:
        try:
            if client.bucket_exists(bucket):
                print(f"bucket {bucket} already exists on {endpoint}")
            else:
                client.make_bucket(bucket)
                print(f"created bucket {bucket} on {endpoint}")
            return 0
        except Exception as exc:  # the server may still be starting
            if time.monotonic() > deadline:
                print(f"giving up on {endpoint}: {exc}", file=sys.stderr)
                return 1
            print(f"waiting for {endpoint}: {exc}", file=sys.stderr)
            time.sleep(5)


if __name__ == "__main__":
    sys.exit(main())
