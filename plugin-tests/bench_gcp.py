"""Distribution time into Google Cloud KMS (the HTTPS fake on 127.0.0.1), per version.

Run through scripts/bench-gcp. One dev server with the plugin; one gcpckms
provider pointed at the fake (plugin-tests/fakes/gcp_kms.py) through the
documented KEYMGMT_GCP_KMS_ENDPOINT and KEYMGMT_GCP_CA_FILE. For each key
type and protection, `--keys` keys of one version are distributed (time per
version), then one key of `--versions` versions. Each version is one
cryptoKeyVersions:import, then version-list polls until it is ENABLED; the
CryptoKey is created once per distribution and the import job once per run
(and reused while active).

The plugin logs, per imported version, the time it waited on Google (calls
and the polls for Google's asynchronous work: `api_us`), the time it spent
wrapping (`wrap_us`) and the whole import (`total_us`). "ours" is the wall
time minus the waits. The fake settles imports after `--settle` seconds,
standing in for Google's import latency; Google's replaces it, ours does not
change.
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

from fakes.gcp_kms import FakeCloudKms
from benchlib import imports_in_log, log, timed_post
from harness import MOUNT, BaoServer, cli, install_plugin, kill_plugins

TYPES = {
    "aes256-gcm96": "encrypt,decrypt",
    "rsa-2048": "sign",
    "rsa-4096": "decrypt",
    "ecdsa-p256": "sign",
}
LINE = re.compile(r"cloud kms: imported version .*?(?=\n|$)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=3, help="one-version keys per type and protection")
    parser.add_argument("--versions", type=int, default=10, help="versions of the many-version key")
    parser.add_argument("--settle", type=float, default=0.05, help="seconds the fake takes per import or job")
    args = parser.parse_args()
    rows = []
    with FakeCloudKms(import_job_delay=args.settle, version_delay=args.settle) as fake:
        env = {"KEYMGMT_GCP_KMS_ENDPOINT": fake.kms_url, "KEYMGMT_GCP_CA_FILE": fake.ca_pem_path,
               "GOOGLE_CREDENTIALS": None, "GOOGLE_APPLICATION_CREDENTIALS": None,
               "GCE_METADATA_HOST": "127.0.0.1:9"}
        server = BaoServer(Path(tempfile.mkdtemp(prefix="bench-gcp-")), env=env)
        try:
            install_plugin(server)
            cli(server, "write", f"{MOUNT}/kms/bench", "provider=gcpckms", f"key_collection={fake.key_collection}",
                f"credentials=service_account_file={fake.service_account_file}")
            s = requests.Session()
            s.trust_env = False
            s.headers["X-Vault-Token"] = server.token
            base = f"{server.addr}/v1/{MOUNT}"

            def distribute(name: str, purpose: str, protection: str) -> float:
                return timed_post(s, f"{base}/kms/bench/key/{name}", {"purpose": purpose, "protection": protection})

            for protection in ("hsm", "software"):
                cli(server, "write", f"{MOUNT}/key/warmup-{protection}", "type=aes256-gcm96")
                distribute(f"warmup-{protection}", "encrypt,decrypt", protection)  # token, job
                for key_type, purpose in TYPES.items():
                    singles, names = [], []
                    for k in range(args.keys):
                        name = f"{key_type}-{protection}-{k}"
                        cli(server, "write", f"{MOUNT}/key/{name}", f"type={key_type}")
                        singles.append(distribute(name, purpose, protection))
                        names.append(name)
                    many = f"{key_type}-{protection}-many"
                    cli(server, "write", f"{MOUNT}/key/{many}", f"type={key_type}")
                    for _ in range(args.versions - 1):
                        cli(server, "write", "-f", f"{MOUNT}/key/{many}/rotate")
                    wall = distribute(many, purpose, protection)
                    time.sleep(0.3)
                    lots = imports_in_log(server, LINE, [many])
                    if len(lots) != args.versions or len(imports_in_log(server, LINE, names)) != args.keys:
                        raise RuntimeError("missing import log lines")
                    api = sum(int(i["api_us"]) for i in lots) / 1e6
                    wrap = sum(int(i["wrap_us"]) for i in lots) / 1e6
                    log(f"{key_type}/{protection}: one version p50 {statistics.median(singles) * 1000:.0f} ms; "
                        f"{args.versions} versions in {wall * 1000:.0f} ms")
                    rows.append({
                        "type": key_type, "protection": protection,
                        "one_version_ms_p50": statistics.median(singles) * 1000,
                        "many_total_ms": wall * 1000, "many_per_version_ms": wall * 1000 / args.versions,
                        "google_share_pct": 100 * api / wall, "ours_share_pct": 100 * (wall - api) / wall,
                        "wrap_ms_per_version": wrap * 1000 / args.versions,
                    })
        finally:
            server.stop()
            kill_plugins(server)

    print(f"gcpckms distribution into the Cloud KMS fake on 127.0.0.1 (imports and jobs settle after "
          f"{args.settle * 1000:.0f} ms): {args.keys} one-version keys and one {args.versions}-version key per row")
    header = (f"{'type':<13} {'protection':<10} {'1 version p50':>14} {f'{args.versions} versions':>13} "
              f"{'per version':>12} {'google':>7} {'ours':>7} {'wrap/version':>13}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['type']:<13} {r['protection']:<10} {r['one_version_ms_p50']:>11.1f} ms {r['many_total_ms']:>10.0f} ms "
              f"{r['many_per_version_ms']:>9.1f} ms {r['google_share_pct']:>6.1f}% {r['ours_share_pct']:>6.1f}% "
              f"{r['wrap_ms_per_version']:>10.2f} ms")
    print(json.dumps(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
