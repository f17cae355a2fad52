"""Distribution time into AWS KMS (LocalStack on 127.0.0.1), per version and for a 20-version key.

Run through scripts/bench-aws. One dev server with the plugin; one awskms
provider whose endpoint is LocalStack. For each key type, `--keys` keys of
one version are distributed (time per version), then one key of
`--versions` versions (the whole distribution's time). Every version costs
CreateKey, GetParametersForImport and ImportKeyMaterial; the alias is
created once per distribution.

The plugin logs, for every imported version, the time it waited on AWS
calls (`api_us`, which includes the SDK's signing and serialisation and
LocalStack's own work), the time it spent wrapping the material (`wrap_us`)
and the whole import (`total_us`). "ours" is the request's wall time minus
the AWS waits: wrapping, the plugin's bookkeeping and storage writes, and
the host's RPCs. LocalStack is slower per call than AWS, so AWS's latency
replaces most of "aws"; ours does not change.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from benchlib import imports_in_log, log, timed_post
from harness import MOUNT, BaoServer, cli, install_plugin, kill_plugins
from localstack import LocalStack

TYPES = {
    "aes256-gcm96": "encrypt,decrypt",
    "rsa-2048": "sign,verify",
    "rsa-4096": "sign,verify",
    "ecdsa-p256": "sign,verify",
}
LINE = re.compile(r"aws kms: imported version .*?(?=\n|$)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=5, help="one-version keys per type")
    parser.add_argument("--versions", type=int, default=20, help="versions of the many-version key")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-aws-"))
    localstack = LocalStack(tmp / "localstack")
    access_key = "".join(random.choice("0123456789") for _ in range(12))
    env = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None,
           "AWS_SESSION_TOKEN": None, "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
    server = BaoServer(tmp / "bao", env=env)
    rows = []
    try:
        install_plugin(server)
        cli(server, "write", f"{MOUNT}/kms/bench", "provider=awskms", "key_collection=us-east-1",
            f"credentials=access_key={access_key}", "credentials=secret_key=bench",
            f"credentials=endpoint={localstack.endpoint}")
        s = requests.Session()
        s.trust_env = False
        s.headers["X-Vault-Token"] = server.token
        base = f"{server.addr}/v1/{MOUNT}"

        def distribute(name: str, purpose: str) -> float:
            return timed_post(s, f"{base}/kms/bench/key/{name}", {"purpose": purpose})

        cli(server, "write", f"{MOUNT}/key/warmup", "type=aes256-gcm96")
        distribute("warmup", "encrypt,decrypt")

        for key_type, purpose in TYPES.items():
            singles, names = [], []
            for k in range(args.keys):
                name = f"{key_type}-one-{k}"
                cli(server, "write", f"{MOUNT}/key/{name}", f"type={key_type}")
                singles.append(distribute(name, purpose))
                names.append(name)
            many = f"{key_type}-many"
            cli(server, "write", f"{MOUNT}/key/{many}", f"type={key_type}")
            for _ in range(args.versions - 1):
                cli(server, "write", "-f", f"{MOUNT}/key/{many}/rotate")
            many_wall = distribute(many, purpose)
            log(f"{key_type}: one version p50 {statistics.median(singles) * 1000:.0f} ms; "
                f"{args.versions} versions in {many_wall * 1000:.0f} ms")
            time.sleep(0.3)  # the plugin's log lines reach the server log
            ones = imports_in_log(server, LINE, names)
            lots = imports_in_log(server, LINE, [many])
            if len(ones) != args.keys or len(lots) != args.versions:
                raise RuntimeError(f"import log lines: {len(ones)}/{args.keys}, {len(lots)}/{args.versions}")
            api_many = sum(int(i["api_us"]) for i in lots) / 1e6
            wrap_many = sum(int(i["wrap_us"]) for i in lots) / 1e6
            rows.append({
                "type": key_type,
                "one_version_ms_p50": statistics.median(singles) * 1000,
                "many_versions": args.versions,
                "many_total_ms": many_wall * 1000,
                "many_per_version_ms": many_wall * 1000 / args.versions,
                "aws_share_pct": 100 * api_many / many_wall,
                "ours_share_pct": 100 * (many_wall - api_many) / many_wall,
                "wrap_share_pct": 100 * wrap_many / many_wall,
                "wrap_ms_per_version": wrap_many * 1000 / args.versions,
            })
    finally:
        server.stop()
        kill_plugins(server)
        localstack.stop()

    print(f"awskms distribution into LocalStack 2026.3.0 on 127.0.0.1: {args.keys} one-version keys "
          f"and one {args.versions}-version key per type")
    header = (f"{'type':<13} {'1 version p50':>14} {f'{args.versions} versions':>13} {'per version':>12} "
              f"{'aws':>7} {'ours':>7} {'wrap':>7} {'wrap/version':>13}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['type']:<13} {r['one_version_ms_p50']:>11.1f} ms {r['many_total_ms']:>10.0f} ms "
              f"{r['many_per_version_ms']:>9.1f} ms {r['aws_share_pct']:>6.1f}% {r['ours_share_pct']:>6.1f}% "
              f"{r['wrap_share_pct']:>6.2f}% {r['wrap_ms_per_version']:>10.2f} ms")
    print(json.dumps(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
