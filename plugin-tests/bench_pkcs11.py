"""Import time per version into a PKCS#11 token (SoftHSM2), per key type.

Run through scripts/bench-pkcs11. One dev server with the plugin and one
`pkcs11` provider on a SoftHSM2 token in a temporary directory (softhsm.py),
RSA-3072 unwrapping key. For each key type, `--keys` keys of one version are
distributed (time per version), then one key of `--versions` versions. Each
version is the two-step unwrap (RSA-OAEP of an ephemeral AES-256 key, then
CKM_AES_KEY_WRAP_PAD of the key) plus, for RSA and EC, C_CreateObject of the
public key, each preceded by a search for what an earlier attempt made.

The plugin logs, per imported version, the time spent in PKCS#11 calls
(`token_us`), in wrapping (`wrap_us`: the OAEP and KWP in software) and the
whole import (`total_us`); "token share" is the token's part of the imports'
own time. Versions of one key are imported four at a time (the session pool),
so "per version" (the wall time of the request over its versions) is below
the time of one import.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from benchlib import imports_in_log, log, timed_post
from harness import MOUNT, BaoServer, cli, install_plugin, kill_plugins
from softhsm import SoftHsmToken

TYPES = {
    "aes256-gcm96": "encrypt,decrypt",
    "rsa-2048": "sign,verify",
    "rsa-3072": "sign,verify",
    "rsa-4096": "decrypt,encrypt",
    "ecdsa-p256": "sign,verify",
    "ecdsa-p384": "sign,verify",
    "ecdsa-p521": "sign,verify",
}
LINE = re.compile(r"pkcs11: imported version .*?(?=\n|$)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=3, help="one-version keys per type")
    parser.add_argument("--versions", type=int, default=5, help="versions of the many-version key")
    args = parser.parse_args()
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-pkcs11-"))
    tok = SoftHsmToken(tmp / "hsm", "bench")
    server = BaoServer(tmp / "bao", env=tok.server_env)
    try:
        install_plugin(server)
        cli(server, "write", f"{MOUNT}/kms/bench", "provider=pkcs11", f"key_collection={tok.label}",
            f"credentials=pin={tok.pin}")
        s = requests.Session()
        s.trust_env = False
        s.headers["X-Vault-Token"] = server.token
        base = f"{server.addr}/v1/{MOUNT}"

        def distribute(name: str, purpose: str) -> float:
            return timed_post(s, f"{base}/kms/bench/key/{name}", {"purpose": purpose, "protection": "hsm"})

        cli(server, "write", f"{MOUNT}/key/warmup", "type=aes256-gcm96")
        distribute("warmup", "encrypt,decrypt")  # module load, login, OAEP hash probe
        for key_type, purpose in TYPES.items():
            singles, names = [], []
            for k in range(args.keys):
                name = f"{key_type}-{k}"
                cli(server, "write", f"{MOUNT}/key/{name}", f"type={key_type}")
                singles.append(distribute(name, purpose))
                names.append(name)
            many = f"{key_type}-many"
            cli(server, "write", f"{MOUNT}/key/{many}", f"type={key_type}")
            for _ in range(args.versions - 1):
                cli(server, "write", "-f", f"{MOUNT}/key/{many}/rotate")
            wall = distribute(many, purpose)
            time.sleep(0.3)
            lots = imports_in_log(server, LINE, [many])
            if len(lots) != args.versions or len(imports_in_log(server, LINE, names)) != args.keys:
                raise RuntimeError("missing import log lines (KEYMGMT_LOG_LEVEL must be info or lower)")
            token = sum(int(i["token_us"]) for i in lots) / 1e6
            wrap = sum(int(i["wrap_us"]) for i in lots) / 1e6
            busy = sum(int(i["total_us"]) for i in lots) / 1e6
            log(f"{key_type}: one version p50 {statistics.median(singles) * 1000:.0f} ms; "
                f"{args.versions} versions in {wall * 1000:.0f} ms")
            rows.append({
                "type": key_type, "one_version_ms_p50": statistics.median(singles) * 1000,
                "many_total_ms": wall * 1000, "many_per_version_ms": wall * 1000 / args.versions,
                "token_ms_per_version": token * 1000 / args.versions,
                "wrap_ms_per_version": wrap * 1000 / args.versions,
                # Of the imports' own time (they run in parallel, so their sum
                # exceeds the wall time).
                "token_share_pct": 100 * token / busy,
            })
    finally:
        server.stop()
        kill_plugins(server)

    print(f"pkcs11 import into SoftHSM2 2.6.1 (RSA-3072 unwrapping key, two-step unwrap): "
          f"{args.keys} one-version keys and one {args.versions}-version key per row")
    header = (f"{'type':<13} {'1 version p50':>14} {f'{args.versions} versions':>13} {'per version':>12} "
              f"{'token/version':>14} {'wrap/version':>13} {'token share':>12}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['type']:<13} {r['one_version_ms_p50']:>11.1f} ms {r['many_total_ms']:>10.0f} ms "
              f"{r['many_per_version_ms']:>9.1f} ms {r['token_ms_per_version']:>11.2f} ms "
              f"{r['wrap_ms_per_version']:>10.2f} ms {r['token_share_pct']:>11.1f}%")
    print(json.dumps(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
